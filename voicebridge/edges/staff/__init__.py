"""The staff page: the kitchen's order board, live and finished calls, the menu's day, the log.

Served by the daemon's own Quart-Trio app as a blueprint under /staff (see `routes.staff_blueprint`),
behind a login (`auth`); live updates are server-sent events fed by the daemon's call notices
(`hub`). Templates and the small plain-JS/CSS files ship inside this package.
"""

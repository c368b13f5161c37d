"""The pizza shop's domain: menu, order, money and the model's tools. Pure: no I/O but reading a menu file."""

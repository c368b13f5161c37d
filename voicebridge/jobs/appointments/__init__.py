"""The appointment book: a business with opening hours and services; callers book, move and cancel."""

"""The jobs a business can give the phone line; each in its own package."""

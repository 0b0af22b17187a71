"""The shipped banks, installed as package data (`melbo-tui` with no arguments opens them): see README.md here."""

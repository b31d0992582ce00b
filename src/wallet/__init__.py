"""Double-entry wallet service for virtual credits."""

__version__ = "0.1.0"

"""HTTP surface: inbound callbacks, the admin API, operations endpoints."""

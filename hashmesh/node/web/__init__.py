"""The node's HTTP surface: operator API, platform API, status page, self-report page."""

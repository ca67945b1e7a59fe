"""pingforward: a stateless Pingback-to-Webmention forwarding proxy."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/pingforward/pingforward"

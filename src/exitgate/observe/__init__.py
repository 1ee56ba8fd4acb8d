"""What the gateway shows about itself: live figures, metrics, the access log."""

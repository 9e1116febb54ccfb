"""Examples beside the platform: reference services for tests and the demo."""

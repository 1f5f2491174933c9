"""HTTP routes: thin handlers that validate, call the service and shape the answer."""

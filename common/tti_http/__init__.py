"""What tti-server and tti-gateway both serve HTTP with: uvicorn's protocol, bounded."""

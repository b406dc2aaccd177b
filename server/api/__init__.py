"""gRPC servicers: thin shells that translate messages and call the domain code."""

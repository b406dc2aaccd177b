"""Operations: tracing of gRPC calls, fleet-state metrics, and shutdown sequencing."""

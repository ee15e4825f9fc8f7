//! Runs Prometheus PromQL test scripts (`.test` files) against the engine.

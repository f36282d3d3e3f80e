"""Shared plumbing for tests, benchmarks and the load test: servers, wrk, payloads, faults,
fuzz strategies, reports. Torch-free. tests, benchmarks and loadtest import this package and
never each other; nothing shipped (app, training) imports it."""

//! Test harness for nodelet's privileged end-to-end tests and benchmarks.

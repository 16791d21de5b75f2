//! Usage records in Postgres (batching writer, spill and replay).

"""The machine: device choice, CPU threads, the allocator."""

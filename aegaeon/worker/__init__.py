"""Worker processes: one device (or a virtual CPU instance), one role, a step executor, two shm rings.

`spec` says what a worker is, `loop` is the common message loop, `prefill` and `decode` are the two
roles; `decode_loop` executes the decode policy's turns on the executor and is what the differential test
holds to the simulator."""

"""How fast it runs: forward latency of compressed layers and the training / AutoAttack speed
benchmark behind `make bench`."""

"""The run: one learner loop for every placement, the placements, the engine ranks' worker
loop, the build layer, the warm-start stage. Nothing imports this package but the CLI."""

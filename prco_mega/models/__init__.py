"""Model configs shared by the learner, the bridge and the rollout engines."""

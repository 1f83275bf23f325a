"""`prco-mega eval`: the paper's eight benchmarks as their publishers ship them, read and checked
before an engine starts, answered greedily (Observer -> Solver, or the single prompt), sharded
over every engine of a torchrun world, and scored as each benchmark's official script scores.
Imports no vLLM at package import."""

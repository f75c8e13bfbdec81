"""The engine-neutral parts of a run, shared by the in-process simulation and the Flower apps:
its workbench (task and model), federation (method, plan, rules, round-0 state), checkpoint,
result, outputs and run folder, and the calibration round."""

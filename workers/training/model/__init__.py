"""HEAVY (torch, transformers, peft): one base model in memory serving every role.

- ``roles``: policy, reference (adapter disabled), value and reward heads on one model
- ``losses``: the tensor math of reward modelling and PPO
- ``encoding``: texts to token ids the way the serving engine sees them
- ``reward``: the reward model; ``ppo``: PPO on the policy's LoRA adapter
- ``trainer``: dataset -> reward model -> PPO -> evaluation -> adapter, in one work directory
- ``evaluate``: the trained policy vs the base on held-out prompts
- ``gate_measurements``: what the gate decides on, measured where the model lives
- ``drift_scoring``: reward-score and KL drift of the active adapter's live responses
- ``synthetic``: simulated preference data with the aggregator's pair rules
"""

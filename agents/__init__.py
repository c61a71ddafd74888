"""Agents: Ray actors hosting a CALM autoencoder and its protocols; speaker and listener policies.

    from agents import AgentConfig, make_agent, SpeakerPolicy, ListenerPolicy
    agent = make_agent(AgentConfig(checkpoint="runs/ae", protocols={"vector": "results/x/protocols/vector"}),
                       name="speaker")
    symbols = SpeakerPolicy(agent, "vector").act(target_ids)   # (B, n)

Ray is imported only when an actor is started, so ``CALMAgentCore`` works in plain processes too.
"""

from agents.actor import (
    RECEIVERS,
    AgentConfig,
    CALMAgent,
    CALMAgentCore,
    make_agent,
    pack_directory,
    pick_device,
    resolve_num_gpus,
    unpack_directory,
)
from agents.policies import ListenerPolicy, SpeakerPolicy, call

__all__ = [
    "RECEIVERS",
    "AgentConfig",
    "CALMAgent",
    "CALMAgentCore",
    "ListenerPolicy",
    "SpeakerPolicy",
    "call",
    "make_agent",
    "pack_directory",
    "pick_device",
    "resolve_num_gpus",
    "unpack_directory",
]

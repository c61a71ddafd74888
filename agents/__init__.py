"""Agents: Ray actors hosting a CALM autoencoder and its protocols; speaker and listener policies.

    from agents import AgentConfig, make_agent, SpeakerPolicy, ListenerPolicy
    agent = make_agent(AgentConfig(checkpoint="runs/ae", protocols={"vector": "results/x/protocols/vector"}),
                       name="speaker")
    symbols = SpeakerPolicy(agent, "vector").act(target_ids)   # (B, n)
    kill_agent(agent)                                           # ends it and frees the files shipped to it

Modules: ``core`` (the agent: ``CALMAgentCore``, ``AgentConfig``), ``actor`` (it as a Ray actor: ``make_agent``,
``kill_agent``), ``placement`` (GPUs and device), ``shipping`` (checkpoints through Ray's object store),
``policies``, ``watch`` (what a sweep's agents need that Ray's restarts do not give: ``AgentWatch``). Ray is imported only when an actor is started, so ``CALMAgentCore`` works in plain processes too.
"""

from agents.actor import CALMAgent, kill_agent, make_agent
from agents.core import RECEIVERS, AgentConfig, CALMAgentCore
from agents.placement import pick_device, resolve_num_gpus
from agents.policies import ListenerPolicy, SpeakerPolicy, call
from agents.shipping import held_agents, pack_directory, release_agent, unpack_directory

__all__ = [
    "RECEIVERS",
    "AgentConfig",
    "CALMAgent",
    "CALMAgentCore",
    "ListenerPolicy",
    "SpeakerPolicy",
    "call",
    "held_agents",
    "kill_agent",
    "make_agent",
    "pack_directory",
    "pick_device",
    "release_agent",
    "resolve_num_gpus",
    "unpack_directory",
]

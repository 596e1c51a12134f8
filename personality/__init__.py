"""chanos.personality: the message model (channels, choose, scopes, actors, calls,
supervisors, names, tracing), plus the system-call protocol and boot (separate modules).

Everything of the message model is importable from here directly.
"""

from .actor import Actor, ActorDied, ActorRef, CallCycle, CallError, Request, call, cast
from .channel import Channel, ChannelClosed, EndOfChannel, Recv, Send, WouldBlock, choose
from .names import register, registered, unregister, whereis
from .scope import Scope, open_scope
from .supervisor import (
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    PERMANENT,
    REST_FOR_ONE,
    TEMPORARY,
    TRANSIENT,
    ChildSpec,
    RestartIntensityExceeded,
    Supervisor,
    open_supervisor,
)
from .tracing import TraceEvent, trace

__all__ = [
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "PERMANENT",
    "REST_FOR_ONE",
    "TEMPORARY",
    "TRANSIENT",
    "Actor",
    "ActorDied",
    "ActorRef",
    "CallCycle",
    "CallError",
    "Channel",
    "ChannelClosed",
    "ChildSpec",
    "EndOfChannel",
    "Recv",
    "Request",
    "RestartIntensityExceeded",
    "Scope",
    "Send",
    "Supervisor",
    "TraceEvent",
    "WouldBlock",
    "call",
    "cast",
    "choose",
    "open_scope",
    "open_supervisor",
    "register",
    "registered",
    "trace",
    "unregister",
    "whereis",
]

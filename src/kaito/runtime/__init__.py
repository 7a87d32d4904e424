"""kaito.runtime: a controller-runtime-style reconciler library for asyncio.

    from kaito.runtime import Manager, Request, Result, TerminalError

    mgr = Manager(client, namespace="default")
    mgr.controller("foo", reconcile).for_(FOOS).owns(DEPLOYMENTS)
    await mgr.run()

It imports nothing from the rest of ``kaito`` (an import-linter contract), so both
controllers can stand on it without standing on each other. Design: RUNTIME.md.
Test doubles (`FakeClock`) live in ``kaito.runtime.testing``, outside the public names.
"""

from kaito.runtime import metrics
from kaito.runtime._clock import Clock, RealClock
from kaito.runtime.aio import Interrupted, run_unless
from kaito.runtime.backoff import Backoff
from kaito.runtime.cache import Cache, index_by_label
from kaito.runtime.client import Client, ClientConfig, PatchType
from kaito.runtime.conditions import ConditionStatus, StatusDraft
from kaito.runtime.controller import Controller
from kaito.runtime.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    TooManyRequests,
)
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.handler import (
    EnqueueRequestForObject,
    EnqueueRequestForOwner,
    EnqueueRequestsFromMapFunc,
)
from kaito.runtime.informer import Informer
from kaito.runtime.leaderelection import LeaderElectionLost, LeaderElector
from kaito.runtime.manager import CacheSyncTimeout, ControllerBuilder, Manager, ManagerOptions
from kaito.runtime.meta import ApiModel, Condition, Obj, ObjectMeta
from kaito.runtime.nodes import node_ready
from kaito.runtime.predicate import (
    AnnotationChanged,
    GenerationChanged,
    LabelChanged,
    Predicate,
    ResourceVersionChanged,
    and_,
    not_,
    or_,
)
from kaito.runtime.quantity import parse_quantity, quantity_gib
from kaito.runtime.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    TokenBucket,
    default_controller_rate_limiter,
)
from kaito.runtime.reconcile import Request, Result, TerminalError
from kaito.runtime.resource import Resource
from kaito.runtime.timestamps import format_rfc3339, now_rfc3339, parse_rfc3339
from kaito.runtime.workqueue import QueueShutDown, WorkQueue

__all__ = [
    "AlreadyExists",
    "AnnotationChanged",
    "ApiError",
    "ApiModel",
    "Backoff",
    "BucketRateLimiter",
    "Cache",
    "CacheSyncTimeout",
    "Client",
    "ClientConfig",
    "Clock",
    "Condition",
    "ConditionStatus",
    "Conflict",
    "Controller",
    "ControllerBuilder",
    "EnqueueRequestForObject",
    "EnqueueRequestForOwner",
    "EnqueueRequestsFromMapFunc",
    "EventRecorder",
    "EventType",
    "GenerationChanged",
    "Gone",
    "Informer",
    "Interrupted",
    "Invalid",
    "ItemExponentialFailureRateLimiter",
    "LabelChanged",
    "LeaderElectionLost",
    "LeaderElector",
    "Manager",
    "ManagerOptions",
    "MaxOfRateLimiter",
    "NotFound",
    "Obj",
    "ObjectMeta",
    "PatchType",
    "Predicate",
    "QueueShutDown",
    "RateLimiter",
    "RealClock",
    "Request",
    "Resource",
    "ResourceVersionChanged",
    "Result",
    "StatusDraft",
    "TerminalError",
    "TokenBucket",
    "TooManyRequests",
    "WorkQueue",
    "and_",
    "default_controller_rate_limiter",
    "format_rfc3339",
    "index_by_label",
    "metrics",
    "node_ready",
    "not_",
    "now_rfc3339",
    "or_",
    "parse_quantity",
    "parse_rfc3339",
    "quantity_gib",
    "run_unless",
]

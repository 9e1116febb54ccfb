"""Least-privilege ACLs for each principal that talks to the cluster, as data, and a way to create them.

``plan(settings, role, principal)`` lists what the orchestrator, an executor, or a tenant's producer
needs and nothing more (docs/kafka.md prints the same as ``kafka-acls`` commands);
``create_acls`` sends them in one CreateAcls request, so tests and ``agentstream kafka`` need no JVM tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from services.common.errors import AgentstreamError
from services.common.settings import KafkaSettings

Role = Literal["orchestrator", "executor", "tenant"]
Operation = Literal["Read", "Write", "Describe", "DescribeConfigs", "Create"]
Resource = Literal["Topic", "Group"]
Pattern = Literal["LITERAL", "PREFIXED"]

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
_RESOURCE = {"Topic": 2, "Group": 3}
_PATTERN = {"LITERAL": 3, "PREFIXED": 4}
_OPERATION = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8, "DescribeConfigs": 10}
_ALLOW = 3


@dataclass(frozen=True)
class AclBinding:
    principal: str  # "User:orchestrator"
    resource: Resource
    name: str
    operation: Operation
    pattern: Pattern = "LITERAL"

    def command(self, bootstrap: str = "$BOOTSTRAP") -> str:
        """The same binding as a ``kafka-acls`` command line."""
        kind = "--topic" if self.resource == "Topic" else "--group"
        pattern = " --resource-pattern-type prefixed" if self.pattern == "PREFIXED" else ""
        return (
            f"kafka-acls --bootstrap-server {bootstrap} --command-config admin.properties --add "
            f"--allow-principal {self.principal} --operation {self.operation} {kind} {self.name}{pattern}"
        )


def plan(
    settings: KafkaSettings, role: Role, principal: str, *, reply_topics: Sequence[str] = (), tenant_topics: Sequence[str] = ()
) -> list[AclBinding]:
    """What ``principal`` needs in ``role``. Every service may Describe the prefix's topics (its start
    checks their shape); reads and writes are granted topic by topic."""
    t = settings.topics
    prefix = settings.topic_prefix
    grants: list[tuple[Resource, str, Operation, Pattern]] = []
    if role in ("orchestrator", "executor"):
        grants += [("Topic", prefix, "Describe", "PREFIXED"), ("Topic", prefix, "DescribeConfigs", "PREFIXED")]
    if role == "orchestrator":
        reads = [t.events, t.status, t.jobs_completed, t.jobs_requested, t.ingress, t.task_updates, t.cache_invalidations, t.schedules]
        reads += reply_topics
        writes = [*t.lanes, t.events, t.control, t.status, t.dlq, t.jobs_updates, t.task_updates, t.tenants, t.schedules, *reply_topics]
        writes.append(t.cache_invalidations)  # result cache invalidations shared by replicas (cachefeed.py)
        grants += [("Group", f"{prefix}orchestrator", "Read", "PREFIXED")]
    elif role == "executor":
        reads = [*t.lanes, t.control, t.status, t.jobs_updates, t.tenants]
        writes = [t.events, t.status, t.dlq, t.jobs_requested, *reply_topics]
        grants += [("Group", f"{prefix}executor", "Read", "PREFIXED")]
    else:  # a tenant's own producer and reader: its ingress topic in, its reply topics out
        reads, writes = list(reply_topics), [t.ingress, *tenant_topics]
        name = principal.removeprefix("User:")
        grants += [("Group", f"{prefix}tenant.{name}.", "Read", "PREFIXED")]
    grants += [("Topic", topic, "Read", "LITERAL") for topic in dict.fromkeys(reads)]
    grants += [("Topic", topic, "Write", "LITERAL") for topic in dict.fromkeys(writes)]
    return [AclBinding(principal, resource, name, operation, pattern) for resource, name, operation, pattern in grants]


class AclRefused(AgentstreamError):
    pass


class _CreateAcls(CreateAclsRequest):  # type: ignore[misc]  # aiokafka.protocol has no type hints
    """aiokafka's CreateAclsRequest carries one binding; this one carries many (same wire format)."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION < 1:
            return request_struct_class([(r[0], r[1], *r[3:]) for r in self._rows])
        return request_struct_class(self._rows)


async def create_acls(admin: AIOKafkaAdminClient, bindings: Sequence[AclBinding]) -> None:
    rows = [(_RESOURCE[b.resource], b.name, _PATTERN[b.pattern], b.principal, "*", _OPERATION[b.operation], _ALLOW) for b in bindings]
    # aiokafka's admin client has no ACL method; its request path is the same one create_topics uses.
    response = await admin._send_request(_CreateAcls(rows))
    errors = [
        f"{b.principal} {b.operation} {b.resource}:{b.name}: {r['error_message'] or for_code(r['error_code']).__name__}"
        for b, r in zip(bindings, response.to_object()["creation_responses"], strict=True)
        if r["error_code"]
    ]
    if errors:
        raise AclRefused(f"the cluster refused ACLs: {'; '.join(errors)}")

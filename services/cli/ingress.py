"""`agentstream ingress`: the Kafka door (docs/kafka.md)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from services.cli.base import err, fail, group

ingress_app = group("ingress", "The Kafka door: signed requests on the ingress topic (docs/kafka.md).")


@ingress_app.command("sign")
def ingress_sign(
    body: Annotated[str, typer.Argument(help="The request, as the JSON body of POST /v1/executions.")],
    tenant: Annotated[str, typer.Option(help="The tenant id: the record's key.")],
    secret_env: Annotated[
        str, typer.Option(help="Environment variable holding the tenant's whsec_ secret.")
    ] = "AGENTSTREAM_INGRESS_SECRET",
    message_id: Annotated[str | None, typer.Option(help="webhook-id (default: a new one).")] = None,
) -> None:
    """Print the headers of a signed ingress record as kcat -H flags, and the execution id it will get."""
    import time
    import uuid

    from services.orchestrator.ingress import execution_id_for
    from services.orchestrator.signatures import sign

    secret = os.environ.get(secret_env)
    if not secret:
        fail(f"set {secret_env} to the tenant's signing secret (AGENTSTREAM_INGRESS_SIGNING_KEYS on the orchestrator)")
        return
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    signature = sign(secret, message_id=message_id, timestamp=timestamp, value=body.encode())
    typer.echo(f"-k {tenant} -H webhook-id={message_id} -H webhook-timestamp={timestamp} -H webhook-signature={signature}")
    err.print(f"execution id: {execution_id_for(tenant, message_id)}", soft_wrap=True, highlight=False)

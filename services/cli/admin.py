"""`agentstream tenants` and `agentstream keys`: the state store (AGENTSTREAM_DATABASE_URL), directly."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import typer

from services.cli.base import console, fail, group

tenants_app = group("tenants", "Tenants in the state store (AGENTSTREAM_DATABASE_URL).")
keys_app = group("keys", "API keys of tenants: stored hashed, shown once at creation.")


def _with_store(work: Any) -> Any:
    from services.orchestrator.settings import OrchestratorSettings
    from services.orchestrator.store import Store

    async def main() -> Any:
        async with Store(OrchestratorSettings().database_url.get_secret_value()) as store, store.begin() as conn:
            return await work(conn)

    return asyncio.run(main())  # a store error is one line (services/cli/base.py)


@tenants_app.command("create")
def tenants_create(
    tenant_id: str,
    name: str = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    concurrent: Annotated[int | None, typer.Option(help="Concurrent executions.")] = None,
) -> None:
    """Create a tenant; prints its webhook signing secret."""
    import re

    from services.orchestrator.store import tenants

    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", tenant_id):
        fail("tenant id: 1-64 letters, digits, '_', '.', '-'")
    limits = {k: v for k, v in {"requests_per_minute": rpm, "tokens_per_minute": tpm, "concurrent": concurrent}.items() if v is not None}
    tenant = _with_store(lambda conn: tenants.create_tenant(conn, tenant_id, name=name, limits=limits))
    if tenant is None:
        fail(f"tenant {tenant_id!r} exists")
    console.print(f"[green]tenant created[/] {tenant.id}  webhook secret: {tenant.webhook_secret}")


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants."""
    from services.orchestrator.store import tenants

    for t in _with_store(tenants.list_tenants):
        console.print(f"{t.id}\t{t.name}\tlimits={t.limits or 'defaults'}{'  (disabled)' if t.disabled else ''}")


@keys_app.command("create")
def keys_create(tenant_id: str, name: str = "") -> None:
    """Create an API key for a tenant. The key is printed once; only its digest is stored."""
    from services.orchestrator.store import tenants

    async def work(conn: Any) -> Any:
        if await tenants.get_tenant(conn, tenant_id) is None:
            return None
        return await tenants.create_key(conn, tenant_id, name=name)

    made = _with_store(work)
    if made is None:
        fail(f"no tenant {tenant_id!r}: create it with `agentstream tenants create {tenant_id}`")
    key, secret = made
    console.print(f"[green]key created[/] {key.id} for {tenant_id} (shown once, store it now):")
    sys.stdout.write(secret + "\n")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key (other replicas stop accepting it within AGENTSTREAM_AUTH_CACHE_S)."""
    from services.orchestrator.store import tenants

    key = _with_store(lambda conn: tenants.revoke_key(conn, key_id))
    if key is None:
        fail(f"no key {key_id!r}")
    console.print(f"[green]key revoked[/] {key.id} of {key.tenant_id}")


@keys_app.command("list")
def keys_list(tenant_id: Annotated[str | None, typer.Argument()] = None) -> None:
    """List keys (ids and prefixes, never the keys)."""
    from services.orchestrator.store import tenants

    for k in _with_store(lambda conn: tenants.list_keys(conn, tenant_id)):
        console.print(f"{k.id}\t{k.tenant_id}\t{k.prefix}…\t{k.name}{'  (revoked)' if k.revoked_at else ''}")

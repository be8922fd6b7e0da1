"""The `clara` command: sessions and users here; jobs and datasets in their own modules."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.client import DEFAULT_URL, ApiError, ClaraError, Client, NotLoggedIn, pass_client
from cli.datasets import datasets
from cli.jobs import jobs
from cli.output import json_option, print_fields, print_json, print_table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="CLARA_URL", default=DEFAULT_URL, show_default=True, show_envvar=True,
              help="Base URL of the Clara API.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for each answer of the API.")
@click.pass_context
def cli(ctx: click.Context, url: str, timeout: float) -> None:
    """Clara: fine-tune LoRA adapters through the Clara API."""
    ctx.obj = Client(url, timeout=timeout)


def read_password(from_stdin: bool, confirm: bool = False) -> str:
    """A password from standard input (one line) or from a hidden prompt."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if not password:
        raise ClaraError("The password is empty.")
    return password


@cli.command()
@click.option("--username", "-u", prompt=True, help="Your Clara username.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
@pass_client
def login(client: Client, username: str, password_stdin: bool) -> None:
    """Log in and store the tokens (mode 0600) in your config directory."""
    password = read_password(password_stdin)
    response = client.request("POST", "/api/auth/login", auth=False,
                              json={"username": username, "password": password})
    client.store.save(client.url, response.json(), username=username)
    me = client.get("/api/auth/me")
    click.echo(f"Logged in to {client.url} as {me['username']} ({me['role']}).")


@cli.command()
@pass_client
def logout(client: Client) -> None:
    """Revoke this login's tokens on the server and forget them here."""
    entry = client.store.get(client.url)
    if not entry:
        click.echo(f"Not logged in to {client.url}.")
        return
    try:
        client.post("/api/auth/logout", {"refresh_token": entry["refresh_token"]} if entry.get("refresh_token")
                    else None)
    except ApiError as exc:
        # Tokens the server no longer accepts are as good as revoked; forget them all the same.
        if exc.status != 401:
            raise
    except NotLoggedIn:
        pass
    finally:
        client.store.delete(client.url)
    click.echo(f"Logged out of {client.url}.")


@cli.command()
@json_option
@pass_client
def whoami(client: Client, as_json: bool) -> None:
    """Show the user you are logged in as."""
    me = client.get("/api/auth/me")
    if as_json:
        print_json(me)
        return
    print_fields([("url", client.url), ("username", me["username"]), ("role", me["role"]), ("id", me["id"]),
                  ("disabled", me["disabled"]), ("created", me["created_at"])])


@cli.group()
def users() -> None:
    """Create, list and disable users (admins only)."""


USER_COLUMNS = [("id", lambda u: u["id"]), ("username", lambda u: u["username"]), ("role", lambda u: u["role"]),
                ("disabled", lambda u: "yes" if u["disabled"] else "no"), ("created", lambda u: u["created_at"])]


@users.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "trainer", "analyst"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the new user's password from standard input.")
@json_option
@pass_client
def users_create(client: Client, username: str, role: str, password_stdin: bool, as_json: bool) -> None:
    """Create a user; the password (12+ characters) is prompted for twice."""
    password = read_password(password_stdin, confirm=True)
    user = client.post("/api/users", {"username": username, "password": password, "role": role})
    if as_json:
        print_json(user)
    else:
        click.echo(f"Created user {user['username']} (id {user['id']}, {user['role']}).")


def all_users(client: Client) -> list[dict[str, Any]]:
    """Every user, page after page."""
    found: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.get("/api/users", {"limit": 200, "after": after})
        found.extend(page["data"])
        if not page["has_more"] or not page["data"]:
            return found
        after = page["data"][-1]["id"]


@users.command("list")
@json_option
@pass_client
def users_list(client: Client, as_json: bool) -> None:
    """List every user."""
    rows = all_users(client)
    if as_json:
        print_json({"object": "list", "data": rows, "has_more": False})
    else:
        print_table(rows, USER_COLUMNS, empty="No users.")


@users.command("disable")
@click.argument("user")
@json_option
@pass_client
def users_disable(client: Client, user: str, as_json: bool) -> None:
    """Disable a user (by username or id): they can no longer log in, and their tokens stop working."""
    match = [u for u in all_users(client) if u["username"] == user or str(u["id"]) == user]
    if not match:
        raise ClaraError(f"No user {user!r}.")
    try:
        updated = client.patch(f"/api/users/{match[0]['id']}", {"disabled": True})
    except ApiError as exc:
        if exc.status == 405 or (exc.status == 404 and exc.code == "not_found"):
            raise ClaraError(f"The Clara API at {client.url} cannot disable users yet "
                             "(no PATCH /api/users/<id>); upgrade the server.") from None
        raise
    if as_json:
        print_json(updated)
    else:
        click.echo(f"Disabled user {updated['username']} (id {updated['id']}).")


cli.add_command(jobs)
cli.add_command(datasets)


def main() -> None:
    """Entry point of the `clara` console script."""
    try:
        cli(prog_name="clara")
    except OSError as exc:
        # The config directory or an output file could not be written: one line, no traceback.
        click.echo(f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

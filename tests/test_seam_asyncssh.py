"""The asyncssh internals the gateway relies on (gateway/transport/asyncssh_seam.py)
are still there, with the call signatures it uses: an upgrade that removes or changes
one fails here, naming it, before any end-to-end test fails in a puzzling way."""

from __future__ import annotations

import inspect

import asyncssh
import pytest

from gateway.transport import asyncssh_seam


@pytest.mark.parametrize(
    "name,owner,params",
    asyncssh_seam.INTERNALS,
    ids=[name for name, _, _ in asyncssh_seam.INTERNALS],
)
def test_internal_is_there(name: str, owner: object, params: tuple[str, ...]) -> None:
    problem = asyncssh_seam.missing_internal(name, owner, params)
    if problem is not None:
        pytest.fail(f"{problem}; see gateway/transport/asyncssh_seam.py")


def test_key_check_is_a_coroutine_we_can_await() -> None:
    # wrap_key_check awaits the original: it must stay a coroutine function.
    assert inspect.iscoroutinefunction(asyncssh.SSHServerConnection.validate_public_key), (
        "asyncssh SSHServerConnection.validate_public_key is no longer async; "
        "see gateway/transport/asyncssh_seam.py wrap_key_check"
    )


def test_channel_request_handlers_are_looked_up_by_name_on_the_instance() -> None:
    # pass_undecodable_commands sets `_process_exec_request` on one channel: that works
    # only while the channel finds its handlers with getattr(self, '_process_...').
    source = inspect.getsource(asyncssh.channel.SSHChannel._service_next_request)
    assert "getattr(self, name" in source and "'_process_'" in source, (
        f"asyncssh {asyncssh.__version__}: SSHChannel._service_next_request no longer looks "
        "request handlers up by name; see gateway/transport/asyncssh_seam.py "
        "pass_undecodable_commands"
    )


def test_missing_internal_names_what_is_gone() -> None:
    class Bare:
        def present(self, a: int) -> None: ...

    assert "has no Bare.absent" in str(
        asyncssh_seam.missing_internal("Bare.absent", Bare, ("self",))
    )
    changed = asyncssh_seam.missing_internal("Bare.present", Bare, ("self", "b"))
    assert changed is not None and "Bare.present takes ('self', 'a')" in changed
    assert asyncssh_seam.missing_internal("Bare.present", Bare, ("self", "a")) is None


# What the test kit and the adversarial suite reach in asyncssh's client (to sign with a
# key other than the one offered, or to offer without signing), and the one public API
# the server needs that older releases lack: an upgrade or a downgrade below the pin that
# loses one fails here by name rather than as a puzzling login failure elsewhere.
CLIENT_INTERNALS = [
    ("asyncssh.auth._ClientPublicKeyAuth", asyncssh.auth, "_ClientPublicKeyAuth"),
    ("asyncssh.auth._client_auth_handlers", asyncssh.auth, "_client_auth_handlers"),
    ("SSHClientConnection.try_next_auth", asyncssh.SSHClientConnection, "try_next_auth"),
    (
        "SSHClientConnection.public_key_auth_requested",
        asyncssh.SSHClientConnection,
        "public_key_auth_requested",
    ),
    (
        "SSHServerConnectionOptions.construct (lifecycle.py)",
        asyncssh.SSHServerConnectionOptions,
        "construct",
    ),
]


@pytest.mark.parametrize(
    "label,owner,attribute", CLIENT_INTERNALS, ids=[c[0] for c in CLIENT_INTERNALS]
)
def test_client_side_names_the_tests_use_are_there(
    label: str, owner: object, attribute: str
) -> None:
    assert hasattr(owner, attribute), f"asyncssh {asyncssh.__version__} has no {label}"


def test_client_auth_handlers_hold_publickey_and_next_auth_takes_next_method() -> None:
    assert b"publickey" in asyncssh.auth._client_auth_handlers, (
        f"asyncssh {asyncssh.__version__}: no b'publickey' client auth handler to replace"
    )
    params = inspect.signature(asyncssh.SSHClientConnection.try_next_auth).parameters
    assert "next_method" in params, (
        f"asyncssh {asyncssh.__version__}: try_next_auth() takes no next_method "
        "(testkit/sshclient.py needs it; asyncssh >= 2.18)"
    )


def test_the_gateway_offers_no_cbc_cipher() -> None:
    # send_fewer_packets drops the empty SSH_MSG_IGNORE that protects CBC ciphers only.
    assert asyncssh_seam.ENCRYPTION_ALGS
    assert not [alg for alg in asyncssh_seam.ENCRYPTION_ALGS if "cbc" in alg]


def test_ack_now_sets_quickack_on_a_tcp_socket() -> None:
    # acknowledge_at_once acknowledges each arrival at once (asyncssh_seam._ack_now).
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            client.sendall(b"x")
            accepted.recv(1)
            asyncssh_seam._ack_now(accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    asyncssh_seam._ack_now(None)  # before the connection is made: nothing to do

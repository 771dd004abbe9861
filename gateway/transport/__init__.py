"""How sessions reach the gateway: its own SSH server (`gateway serve`) and OpenSSH's
sshd (`gateway shell` as a forced command). Each is a thin adapter that makes three
streams and hands them to the session core (gateway/session.py).

    listener.py      the listening socket, the accept loop, the PROXY header, admission
                     under the caps in limits.py
    connection.py    one asyncssh SSHServer per connection: authentication from the
                     verified signature, the idle timer, session caps, the exec adapter
    lifecycle.py     the running `Gateway`: start, stop with a grace period, reload on
                     SIGHUP, keydir sync; `run()` with the signals
    openssh.py       behind sshd: the authorized-keys line and `gateway shell`
    asyncssh_seam.py every asyncssh internal used, with its reason
"""

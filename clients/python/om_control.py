"""om_control: a client for an om node's control socket (<root>/var/run/om.sock).

The analogue of receptorctl's ReceptorControl class, standard library only. The socket
speaks Receptor's control service protocol (docs/CONTROL.md): a greeting line naming the
node, then one command per line, answered with one JSON line or an "ERROR: ..." line;
"work submit" and "work results" take the connection over, so they use one of their own.
The agent API's {"action", "options"} lines work on the same socket (see api()).

    from om_control import OmControl
    with OmControl("/var/run/om.sock") as c:
        print(c.simple_command("status")["NodeID"])
        unit = c.submit_work("cat", b"hello", node="n2")["unitid"]
        print(c.get_work_results(unit))
"""

import json
import socket

GREETING = "Receptor Control, node "
MAX_LINE = 4 << 20


class ControlError(RuntimeError):
    """The control service answered ERROR: the message says why."""


class OmControl:
    """A session on an om control socket."""

    def __init__(self, path, timeout=60.0):
        self.path = path
        self.timeout = timeout
        self.node_id = None
        self._sock = None
        self._rfile = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self):
        """Opens the socket (if not open) and reads the greeting."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self._sock = sock
        self._rfile = sock.makefile("rb")
        self.node_id = self._greeting()

    def close(self):
        if self._rfile is not None:
            self._rfile.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._rfile = None

    def readstr(self):
        """One line from the node, without its newline."""
        line = self._rfile.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionError("the node closed the connection")
        return line.decode("utf-8").rstrip("\n")

    def writestr(self, text):
        self._sock.sendall(text.encode("utf-8"))

    def _greeting(self):
        line = self.readstr()
        if line.startswith("ERROR: "):
            raise ControlError(line[7:])
        if not line.startswith(GREETING):
            raise ConnectionError("not an om control socket: %r" % line)
        return line[len(GREETING):]

    @staticmethod
    def _answer(line):
        if line.startswith("ERROR: "):
            raise ControlError(line[7:])
        return json.loads(line)

    def simple_command(self, command):
        """Runs a one-answer command: a string ("work list") or a dict (the JSON form)."""
        self.connect()
        text = command if isinstance(command, str) else json.dumps(command)
        self.writestr(text + "\n")
        return self._answer(self.readstr())

    def connect_to_service(self, node, service="control"):
        """Makes the rest of this session talk to node's control service."""
        self.connect()
        self.writestr(json.dumps({"command": "connect", "node": node, "service": service}) + "\n")
        first = self.readstr()
        if first.startswith("ERROR: "):
            raise ControlError(first[7:])
        if first != "Connecting":
            raise ConnectionError("unexpected answer to connect: %r" % first)
        self.node_id = self._greeting()

    def api(self, action, options=None):
        """An agent API request; returns its {status, data, error} answer."""
        self.connect()
        self.writestr(json.dumps({"action": action, "options": options or {}}) + "\n")
        return json.loads(self.readstr())

    def submit_work(self, worktype, payload, node=None, params=None, ttl=None):
        """Submits a unit with payload (bytes, str or a binary file); returns
        {"result": "Job Started", "unitid": ...}. Uses a connection of its own."""
        cmd = {"command": "work", "subcommand": "submit", "node": node or "localhost",
               "worktype": worktype}
        if params is not None:
            cmd["params"] = params
        if ttl is not None:
            cmd["ttl"] = ttl
        with OmControl(self.path, self.timeout) as c:
            c.writestr(json.dumps(cmd) + "\n")
            first = c.readstr()
            if first.startswith("ERROR: "):
                raise ControlError(first[7:])
            if not first.startswith("Work unit created with ID"):
                raise ConnectionError("unexpected answer: %r" % first)
            try:
                if hasattr(payload, "read"):
                    for chunk in iter(lambda: payload.read(65536), b""):
                        c._sock.sendall(chunk)
                else:
                    c._sock.sendall(payload.encode("utf-8") if isinstance(payload, str) else payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused while sending: the answer says why
            c._sock.shutdown(socket.SHUT_WR)
            return self._answer(c.readstr())

    def get_work_results(self, unitid, startpos=0):
        """A unit's stdout from byte startpos, once the unit has ended (bytes)."""
        with OmControl(self.path, self.timeout) as c:
            c.writestr(json.dumps({"command": "work", "subcommand": "results",
                                   "unitid": unitid, "startpos": startpos}) + "\n")
            head = c.readstr()
            if head.startswith("ERROR: "):
                raise ControlError(head[7:])
            return c._rfile.read()

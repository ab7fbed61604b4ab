"""heapprofd's socket and database refusals: other users, foreign files, live daemons."""
import hashlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import HEAPPROFD, Daemon, query, run_client  # noqa: E402


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_d(*args):
    return subprocess.run([HEAPPROFD] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=20)


class Socket(unittest.TestCase):
    def test_socket_is_private(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            mode = os.stat(d.sock).st_mode
            self.assertTrue(stat.S_ISSOCK(mode))
            self.assertEqual(stat.S_IMODE(mode), 0o600)

    @unittest.skipUnless(os.geteuid() == 0, "switching to another uid needs root")
    def test_peer_of_another_uid_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            # The directory must let uid 65534 reach the socket, and the socket must let
            # it connect, so that the refusal happens at SO_PEERCRED.
            os.chmod(tmp, 0o711)
            with Daemon(tmp) as d:
                os.chmod(d.sock, 0o666)
                run_client(d.sock, "normal", "intruder", events=100, extra=["--setuid", "65534"])
                d.wait_log("uid 65534 is not the daemon's uid 0")
                self.assertIn("refused connection from pid", d.log())
                self.assertEqual(query(d.db, "SELECT count(*) AS n FROM sessions")[0]["n"], 0)
                # The daemon still serves its own user.
                run_client(d.sock, "normal", "owner", events=100)
                d.wait_log("ended: exited")

    @unittest.skipUnless(os.geteuid() == 0, "running the daemon as another uid needs root")
    def test_default_socket_dir_is_created_private(self):
        # Run as uid 65534 without XDG_RUNTIME_DIR so that the default directory is
        # /tmp/heapprofd-65534, which this test may create and remove.
        uid = 65534
        rundir = "/tmp/heapprofd-%d" % uid
        if os.path.lexists(rundir):
            self.skipTest("%s exists already; not touching it" % rundir)
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}

        def as_nobody():
            os.setgid(uid)
            os.setuid(uid)
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o711)
            home = os.path.join(tmp, "nobody")
            os.mkdir(home, 0o700)
            os.chown(home, uid, uid)
            try:
                # A pre-existing default directory that others can enter is refused.
                os.mkdir(rundir, 0o755)
                os.chown(rundir, uid, uid)
                p = subprocess.run([HEAPPROFD, "--db", os.path.join(home, "p.sqlite")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                   preexec_fn=as_nobody, timeout=20)
                self.assertEqual(p.returncode, 1)
                self.assertIn("must be private to uid %d" % uid, p.stderr.decode())
                os.rmdir(rundir)
                # Missing: created 0700, and the socket inside it 0600.
                d = subprocess.Popen([HEAPPROFD, "--db", os.path.join(home, "p.sqlite")],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     preexec_fn=as_nobody)
                try:
                    line = d.stdout.readline().decode()
                    self.assertEqual(line, "heapprofd: listening on %s/heapprofd.sock\n" % rundir)
                    st = os.lstat(rundir)
                    self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (uid, 0o700))
                    st = os.lstat(rundir + "/heapprofd.sock")
                    self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (uid, 0o600))
                    d.terminate()
                    self.assertEqual(d.wait(20), 0)
                finally:
                    if d.poll() is None:
                        d.kill()
                        d.wait()
                    d.stdout.close()
                    d.stderr.close()
            finally:
                if os.path.lexists(rundir + "/heapprofd.sock"):
                    os.unlink(rundir + "/heapprofd.sock")
                if os.path.lexists(rundir):
                    os.rmdir(rundir)

    def test_regular_file_at_socket_path_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "not-a-socket")
            with open(sock, "w") as f:
                f.write("precious")
            db = os.path.join(tmp, "p.sqlite")
            p = run_d("--db", db, "--socket", sock)
            self.assertEqual(p.returncode, 1)
            self.assertIn("%s exists and is not a socket" % sock, p.stderr.decode())
            with open(sock) as f:
                self.assertEqual(f.read(), "precious")
            self.assertFalse(os.path.exists(db))  # refused before the database was touched

    def test_socket_of_a_live_daemon_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            p = run_d("--db", os.path.join(tmp, "other.sqlite"), "--socket", d.sock)
            self.assertEqual(p.returncode, 1)
            self.assertIn("another heapprofd is already listening on %s" % d.sock,
                          p.stderr.decode())
            # The first daemon is unharmed and its socket still works.
            run_client(d.sock, "normal", "still-here", events=100)
            d.wait_log("ended: exited")

    def test_stale_socket_is_replaced(self):
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "hp.sock")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(sock)
            s.close()  # leaves the socket file with nobody listening
            with Daemon(tmp, sock=sock) as d:
                self.assertIn("replaced stale socket", d.log())
                run_client(d.sock, "normal", "fresh", events=100)
                d.wait_log("ended: exited")

    def test_socket_dir_writable_by_others_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            shared = os.path.join(tmp, "shared")
            os.mkdir(shared)
            os.chmod(shared, 0o777)
            p = run_d("--db", os.path.join(tmp, "p.sqlite"), "--socket",
                      os.path.join(shared, "hp.sock"))
            self.assertEqual(p.returncode, 1)
            self.assertIn("is writable by other users", p.stderr.decode())

    def test_socket_path_too_long_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = run_d("--db", os.path.join(tmp, "p.sqlite"), "--socket", "/tmp/" + "x" * 200)
            self.assertEqual(p.returncode, 1)
            self.assertIn("over the limit of 107", p.stderr.decode())


class Database(unittest.TestCase):
    def check_refused(self, make, text):
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "foreign.sqlite")
            make(db)
            before = digest(db)
            p = run_d("--db", db, "--socket", os.path.join(tmp, "hp.sock"))
            self.assertEqual(p.returncode, 1)
            err = p.stderr.decode()
            self.assertIn(db, err)
            self.assertIn(text, err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertEqual(digest(db), before)
            self.assertEqual(sorted(os.listdir(tmp)), ["foreign.sqlite"])

    def test_foreign_sqlite_database_is_refused(self):
        def make(db):
            import sqlite3
            con = sqlite3.connect(db)
            con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance REAL)")
            con.execute("INSERT INTO accounts VALUES (1, 10.5)")
            con.commit()
            con.close()
        self.check_refused(make, "not a heapprof database")

    def test_text_file_is_refused(self):
        def make(db):
            with open(db, "w") as f:
                f.write("this is not a database\n" * 100)
        self.check_refused(make, "not a heapprof database")

    @staticmethod
    def make_newer(journal_mode):
        def make(db):
            import sqlite3
            con = sqlite3.connect(db)
            con.execute("PRAGMA journal_mode = %s" % journal_mode)
            con.execute("PRAGMA application_id = 1752199782")
            con.execute("PRAGMA user_version = 99")
            con.execute("CREATE TABLE session (id INTEGER PRIMARY KEY)")
            con.commit()
            con.close()
        return make

    def test_newer_schema_is_refused(self):
        self.check_refused(self.make_newer("DELETE"), "newer")

    def test_newer_wal_database_is_refused_without_side_files(self):
        # As a newer heapprof leaves its database: WAL mode, closed cleanly.
        self.check_refused(self.make_newer("WAL"), "newer")

    def test_symlink_at_the_database_path_is_refused(self):
        # A dangling link planted in a shared directory: root's heapprofd must not create
        # the file it points to.
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "prof.sqlite")
            target = os.path.join(tmp, "victim")
            os.symlink(target, db)
            p = run_d("--db", db, "--socket", os.path.join(tmp, "hp.sock"))
            self.assertEqual(p.returncode, 1)
            err = p.stderr.decode()
            self.assertIn("%s: the database is a symbolic link; refusing to follow it" % db, err)
            self.assertFalse(os.path.exists(target))
            self.assertEqual(sorted(os.listdir(tmp)), ["prof.sqlite"])

    def test_database_of_another_user_is_refused(self):
        if os.geteuid() != 0:
            self.skipTest("only root can give a file to another user")
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "prof.sqlite")
            open(db, "wb").close()
            os.chmod(db, 0o666)
            os.chown(db, 65534, 65534)
            p = run_d("--db", db, "--socket", os.path.join(tmp, "hp.sock"))
            self.assertEqual(p.returncode, 1)
            self.assertIn("belongs to uid 65534", p.stderr.decode())
            self.assertEqual(os.path.getsize(db), 0)
            self.assertEqual(sorted(os.listdir(tmp)), ["prof.sqlite"])
            # Nor is another user's lock file used.
            os.unlink(db)
            with open(db + ".lock", "w") as f:
                f.write("1\n")
            os.chmod(db + ".lock", 0o666)
            os.chown(db + ".lock", 65534, 65534)
            p = run_d("--db", db, "--socket", os.path.join(tmp, "hp.sock"))
            self.assertEqual(p.returncode, 1)
            self.assertIn("the lock file %s.lock belongs to another user" % db,
                          p.stderr.decode())
            self.assertFalse(os.path.exists(db))

    def test_database_is_private_and_a_shared_directory_is_warned_about(self):
        with tempfile.TemporaryDirectory() as tmp:
            shared = os.path.join(tmp, "shared")
            os.mkdir(shared)
            os.chmod(shared, 0o1777)
            sock_dir = os.path.join(tmp, "sock")
            os.mkdir(sock_dir, 0o700)
            # A file planted empty and world-writable is adopted only once it is private.
            db = os.path.join(shared, "prof.sqlite")
            open(db, "wb").close()
            os.chmod(db, 0o666)
            old = os.umask(0)
            try:
                d = Daemon(tmp, db=db, sock=os.path.join(sock_dir, "hp.sock"))
                d.start()
            finally:
                os.umask(old)
            try:
                run_client(d.sock, "normal", "private", events=100)
                d.wait_log("ended: exited")
                for name in ("prof.sqlite", "prof.sqlite-wal", "prof.sqlite-shm"):
                    mode = os.stat(os.path.join(shared, name)).st_mode & 0o777
                    self.assertEqual(mode, 0o600, name)
                self.assertIn("the database directory %s is writable by other users (mode 1777)"
                              % shared, d.log())
                self.assertEqual(d.stop(), 0)
            finally:
                d.kill()
                d.check_sanitizers()

    def test_existing_database_gets_sessions_appended(self):
        with tempfile.TemporaryDirectory() as tmp:
            for n in (1, 2):
                with Daemon(tmp) as d:
                    run_client(d.sock, "normal", "run%d" % n, events=100)
                    d.wait_log("ended: exited")
                    self.assertEqual(d.stop(), 0)
            rows = query(d.db, "SELECT session_id, status FROM sessions ORDER BY session_id")
            self.assertEqual([(r["session_id"], r["status"]) for r in rows],
                             [(1, "exited"), (2, "exited")])


if __name__ == "__main__":
    unittest.main()

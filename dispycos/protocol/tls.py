# -*- test-case-name: tests.test_tls -*-
"""
TLS for the TCP links of dispycos (nodes, servers, schedulers, clients).

Every link that leaves the host is TLS: by default with keys each process
makes for itself (a self-signed certificate nobody verifies), the peers
proving their secret in a handshake bound to that TLS session (see
L{dispycos.protocol.auth}), so a passive or on-path attacker without the
secret can neither read a link nor inject into it, and no certificate has to
be set up. Links on loopback may stay plaintext: a listener tells TLS from
plaintext by the first byte and takes plaintext from loopback peers only.

With C{--certfile}/C{--keyfile} plus C{--cafile} (the original's options),
every link is TLS and peers are verified against that CA as well, by the
cluster-wide service name in their certificates (C{dispycos} by default),
so certificates need not name every host; a listener with a C{cafile}
requires client certificates (mutual TLS). Misconfigurations fail at once
with one clear line (L{TLSConfigError}).
"""

import functools
import ipaddress
import os
import socket

from twisted.internet import defer, interfaces
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from dispycos.errors import DispycosError

# twisted.internet.ssl and twisted.protocols.tls (pyOpenSSL) are imported only
# when TLS is configured, and used directly rather than through
# reactor.listenSSL/connectSSL or endpoints: node and server processes
# import Twisted without pyOpenSSL (see dispycos._lean).

#: The name peers' certificates must carry (subjectAltName DNS).
SERVICE_NAME = "dispycos"


class TLSConfigError(DispycosError):
    """A TLS file is missing, unreadable, or the key does not match the certificate."""


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError("cannot read the %s %s: %s" % (what, path, e.strerror or e))


class TLS:
    """
    TLS settings of one process.

    @param certfile: PEM certificate (may also hold the key).
    @param keyfile: PEM private key (default: in C{certfile}).
    @param cafile: PEM CA to verify peers against; a listener with one
        requires client certificates.
    @param name: the service name peers' certificates must carry.
    """

    def __init__(self, certfile=None, keyfile=None, cafile=None, name=SERVICE_NAME):
        self.name = name
        self.cert = None
        self.ca = None
        if keyfile and not certfile:
            raise TLSConfigError("--keyfile needs --certfile")
        from twisted.internet import ssl

        if certfile:
            pem = _read(certfile, "certificate")
            if keyfile:
                pem = pem + b"\n" + _read(keyfile, "key")
            try:
                self.cert = ssl.PrivateCertificate.loadPEM(pem)
            except Exception as e:
                raise TLSConfigError("%s / %s: not a certificate and matching key (%s)" % (certfile, keyfile, e))
            try:
                self.cert.options().getContext()  # checks that key and certificate match
            except Exception as e:
                raise TLSConfigError("the key %s does not match the certificate %s: %s" % (keyfile, certfile, e))
        if cafile:
            try:
                self.ca = ssl.Certificate.loadPEM(_read(cafile, "CA certificate"))
            except TLSConfigError:
                raise
            except Exception as e:
                raise TLSConfigError("%s is not a PEM CA certificate (%s)" % (cafile, e))

    @property
    def enabled(self):
        return self.cert is not None or self.ca is not None

    def server_options(self):
        if self.cert is None:
            raise TLSConfigError("a TLS listener needs --certfile (and --keyfile)")
        from twisted.internet import ssl

        kw = dict(privateKey=self.cert.privateKey.original, certificate=self.cert.original,
                  raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
        if self.ca is not None:
            kw.update(verify=True, caCerts=[self.ca.original], requireCertificate=True)
        return ssl.CertificateOptions(**kw)

    def client_options(self):
        if self.ca is None:
            raise TLSConfigError("TLS connections need --cafile to verify peers")
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(self.name, trustRoot=self.ca, clientCertificate=self.cert,
                                       extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3})


# -- keys of this process, for links that leave the host -----------------------

#: RFC 9266: the exporter label of the tls-exporter channel binding.
BINDING_LABEL = b"EXPORTER-Channel-Binding"


@functools.lru_cache(maxsize=1)
def ephemeral_certificate():
    """This process's own key and self-signed certificate (made once, on first use)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from twisted.internet import ssl

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVICE_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ssl.PrivateCertificate.loadPEM(pem)


def _tls13(**kw):
    from twisted.internet import ssl

    return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3, **kw)


def _ephemeral_server_options():
    cert = ephemeral_certificate()
    return _tls13(privateKey=cert.privateKey.original, certificate=cert.original)


def _ephemeral_client_options():
    # Nobody's certificate is checked: the handshake over it, bound to the
    # session, proves who is at the other end.
    return _tls13()


def channel_binding(transport):
    """The channel binding of a connection: its TLS session's exporter value, or C{b"plain"}."""
    if interfaces.ISSLTransport.providedBy(transport):
        handle = transport.getHandle()
        return b"tls:" + handle.export_keying_material(BINDING_LABEL, 32)
    return b"plain"


def is_loopback(host):
    """True when C{host} (name or address) is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


#: Set to 1 in the environment of every process of a cluster, links off the
#: host are plaintext: for measuring what TLS costs (benchmarks/), never for use.
UNSAFE_PLAINTEXT = "DISPYCOS_UNSAFE_PLAINTEXT"


def _plaintext_off_host():
    if os.environ.get(UNSAFE_PLAINTEXT) == "1":
        Logger().warn("{var}=1: links off this host are plaintext (for measurements only)", var=UNSAFE_PLAINTEXT)
        return True
    return False


# -- listening and connecting ---------------------------------------------------------


class _TLSOrPlain(Protocol, TimeoutMixin):
    """
    One accepted connection before its first byte: TLS (a handshake record,
    0x16) or plaintext AMP, which only a loopback peer may use. A connection
    that says nothing for a while is dropped.
    """

    log = Logger()
    SILENCE = 3

    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self.inner = None

    def connectionMade(self):
        self.setTimeout(self.SILENCE)

    def timeoutConnection(self):
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self.inner is None:
            self.setTimeout(None)
            if data[:1] == b"\x16":
                self.inner = self.factory.tls.buildProtocol(self.addr)
            elif is_loopback(getattr(self.addr, "host", "")):
                self.inner = self.factory.plain.buildProtocol(self.addr)
            else:
                self.log.warn("dropping {peer}: plaintext from off this host", peer=self.addr)
                self.transport.abortConnection()
                return
            if self.inner is None:
                self.transport.abortConnection()
                return
            self.inner.makeConnection(self.transport)
        self.inner.dataReceived(data)

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self.inner is not None:
            self.inner.connectionLost(reason)


class _TLSOrPlainFactory(Factory):
    noisy = False

    def __init__(self, factory):
        from twisted.protocols.tls import TLSMemoryBIOFactory

        self.plain = factory
        self.tls = TLSMemoryBIOFactory(_ephemeral_server_options(), False, factory)

    def buildProtocol(self, addr):
        return _TLSOrPlain(self, addr)

    def doStart(self):
        self.plain.doStart()

    def doStop(self):
        self.plain.doStop()


def listen(reactor, port, factory, interface="", tls=None):
    """
    Listen on TCP: with C{tls} enabled, TLS verified against its CA on every
    connection; else TLS (this process's own keys) for peers off this host
    and plaintext for loopback ones, or plaintext only on a loopback address.
    """
    if tls is not None and tls.enabled:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls.server_options(), False, factory)
    elif not (interface and is_loopback(interface)) and not _plaintext_off_host():
        factory = _TLSOrPlainFactory(factory)
    return reactor.listenTCP(port, factory, interface=interface)


def connect(reactor, host, port, proto, tls=None, timeout=10):
    """
    Connect C{proto} (a protocol instance) to C{host:port} over TCP: in TLS
    verified against a CA when C{tls} is enabled, else in TLS with this
    process's own keys when C{host} is off this host, else plaintext.
    Deferred firing with C{proto} once connected (for TLS, the handshake
    follows; writes wait for it).
    """
    factory = _OneConnection(reactor, proto)
    wrapped = factory
    if tls is not None and tls.enabled:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(tls.client_options(), True, factory)
    elif not is_loopback(host) and not _plaintext_off_host():
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(_ephemeral_client_options(), True, factory)
    reactor.connectTCP(host, port, wrapped, timeout=timeout)
    return factory.deferred


class _OneConnection(ClientFactory):
    """
    The factory of one connection of a prepared protocol (endpoints would do,
    but importing them costs node and server processes ~1.3 MiB each).
    """

    noisy = False

    def __init__(self, reactor, proto):
        self.reactor = reactor
        self.proto = proto
        self.deferred = defer.Deferred()

    def buildProtocol(self, addr):
        self.proto.factory = self
        # Fire once the transport is attached (makeConnection follows at once).
        self.reactor.callLater(0, self.deferred.callback, self.proto)
        return self.proto

    def clientConnectionFailed(self, connector, reason):
        self.deferred.errback(reason)


def make_certificates(directory, names=(SERVICE_NAME,), days=3650):
    """
    Make a private CA and one certificate (signed by it, for C{names}) in
    C{directory}: C{ca.pem}, C{ca.key}, C{dispycos.pem}, C{dispycos.key}
    (the keys created mode 0600). Returns their paths. Files already there
    are not overwritten (C{FileExistsError}). (C{python -m dispycos.protocol.tls
    DIRECTORY} does this.)
    """
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dispycos cluster CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    nokey = serialization.NoEncryption()
    files = {
        "ca.pem": (ca.public_bytes(pem), 0o644),
        "ca.key": (ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nokey), 0o600),
        "dispycos.pem": (cert.public_bytes(pem), 0o644),
        "dispycos.key": (key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nokey), 0o600),
    }
    paths = {name: os.path.join(directory, name) for name in files}
    there = [p for p in paths.values() if os.path.lexists(p)]
    if there:
        raise FileExistsError("make_certificates: %s already exist(s): not overwritten" % ", ".join(there))
    for name, (data, mode) in files.items():
        # Created with their final mode (a key is never readable by others,
        # not even for a moment), and never through a planted link.
        fd = os.open(paths[name], os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return paths


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2:
        print("usage: python -m dispycos.protocol.tls DIRECTORY [NAME ...]", file=sys.stderr)
        sys.exit(2)
    made = make_certificates(sys.argv[1], tuple(sys.argv[2:]) or (SERVICE_NAME,))
    for name, path in sorted(made.items()):
        print(path)

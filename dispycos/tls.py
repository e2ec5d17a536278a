# -*- test-case-name: tests.test_tls -*-
"""
TLS for every TCP link (nodes, servers, schedulers, clients), from the
original's C{--certfile}/C{--keyfile} plus C{--cafile}: peers are verified
against that CA, by the cluster-wide service name in their certificates
(C{dispycos} by default), so certificates need not name every host.

A listener with a C{cafile} requires client certificates (mutual TLS).
Misconfigurations fail at once with one clear line (L{TLSConfigError}).
"""

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory

from .errors import DispycosError

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
        if self.ca is not None:
            return self.cert.options(self.ca)
        return self.cert.options()

    def client_options(self):
        if self.ca is None:
            raise TLSConfigError("TLS connections need --cafile to verify peers")
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(self.name, trustRoot=self.ca, clientCertificate=self.cert)


def listen(reactor, port, factory, interface="", tls=None):
    """Listen on TCP, or TLS when C{tls} is enabled."""
    if tls is not None and tls.enabled:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls.server_options(), False, factory)
    return reactor.listenTCP(port, factory, interface=interface)


def connect(reactor, host, port, proto, tls=None, timeout=10):
    """
    Connect C{proto} (a protocol instance) to C{host:port} over TCP, wrapped
    in verified TLS when C{tls} is enabled. Deferred firing with C{proto}
    once connected (for TLS, the handshake follows; writes wait for it).
    """
    factory = _OneConnection(reactor, proto)
    wrapped = factory
    if tls is not None and tls.enabled:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(tls.client_options(), True, factory)
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
    are not overwritten (C{FileExistsError}). (C{python -m dispycos.tls
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
        print("usage: python -m dispycos.tls DIRECTORY [NAME ...]", file=sys.stderr)
        sys.exit(2)
    made = make_certificates(sys.argv[1], tuple(sys.argv[2:]) or (SERVICE_NAME,))
    for name, path in sorted(made.items()):
        print(path)

#!/usr/bin/env bash
# Generate the TLS fixtures the integration tests use (tests/integration/test_tls.py).
#
# Run once; the generated PEM files are kept in the repository as test fixtures, so the tests
# never need the openssl CLI. Re-running replaces every file with fresh keys and certificates.
#
#   ca.pem, ca.key          the test cluster's CA (self-signed, 100 years)
#   node.pem, node.key      one member certificate signed by that CA, usable as both server
#                           and client certificate (serverAuth + clientAuth), for 127.0.0.1
#                           and localhost (dfs does not check names, but other tools might)
#   other-ca.pem            a second, unrelated CA (its key is deleted once used) ...
#   other.pem, other.key    ... and a certificate it signed: an outsider, for negative tests
#
# Keys are EC P-256 (prime256v1), which OpenSSL 3 and Python's ssl module accept at every
# security level. Private keys are written unencrypted (-noenc): dfsd reads them without a
# passphrase. Needs OpenSSL >= 3.0 (with 1.1.1, write -nodes for -noenc).
set -euo pipefail

cd "$(dirname "$0")"
DAYS=36500  # 100 years

# The extensions of a member certificate, in a temporary file because `openssl x509 -req`
# reads extensions for the certificate it signs only from a config file (-extfile).
ext=$(mktemp)
trap 'rm -f "$ext" node.csr other.csr ca.srl other-ca.srl other-ca.key' EXIT
cat >"$ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EXT

# make_ca NAME CN: a self-signed CA. `req -x509` makes a new EC P-256 key (NAME.key) and a
# self-signed certificate for it (NAME.pem) in one step, marked as a CA that may sign
# certificates.
make_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc \
        -keyout "$1.key" -out "$1.pem" -days "$DAYS" -sha256 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
}

# make_cert NAME CN CA: a member certificate NAME.pem for a new key NAME.key, signed by CA.
make_cert() {
    # A new EC P-256 key and a certificate signing request for it (NAME.csr, deleted on exit).
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc \
        -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
    # The CA signs the request, adding the member extensions from $ext; -CAcreateserial
    # picks a random serial number (kept in CA.srl, deleted on exit).
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
        -out "$1.pem" -days "$DAYS" -sha256 -extfile "$ext"
}

make_ca ca "dfs test CA"
make_cert node "dfs test node" ca
make_ca other-ca "dfs other CA"
make_cert other "dfs outsider" other-ca

# Check the results: each certificate verifies against its own CA, for both purposes ...
openssl verify -CAfile ca.pem -purpose sslserver node.pem
openssl verify -CAfile ca.pem -purpose sslclient node.pem
openssl verify -CAfile other-ca.pem -purpose sslclient other.pem
# ... and not against the other one (verify must fail here).
if openssl verify -CAfile ca.pem other.pem >/dev/null 2>&1; then
    echo "make.sh: other.pem unexpectedly verifies against ca.pem" >&2
    exit 1
fi
chmod 600 ./*.key
echo "make.sh: wrote ca.pem ca.key node.pem node.key other-ca.pem other.pem other.key"

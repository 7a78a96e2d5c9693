#!/usr/bin/env bash
# Self-signed TLS certificates for a local Flower deployment (SuperLink + SuperNodes on this
# machine), made with openssl. For tests and prototypes only: production deployments use
# certificates from their organization's CA.
#
#   bash scripts/make-test-certs.sh [OUT_DIR] [HOST ...]
#
# Writes into OUT_DIR (default: certificates/):
#   ca.crt / ca.key          a throw-away certificate authority (give ca.crt to SuperNodes and
#                            to the flwr CLI connection: --root-certificates / root-certificates)
#   server.pem / server.key  the SuperLink's certificate (signed by the CA) and private key
#                            (flower-superlink --ssl-certfile / --ssl-keyfile / --ssl-ca-certfile)
# The server certificate is valid for localhost, 127.0.0.1 and ::1 plus every extra HOST given
# (a DNS name or an IP address). DAYS=n sets the validity (default 30 days).
#
# SUPERNODE_KEYS=n also writes n SuperNode key pairs for Flower's SuperNode authentication
# (flower-superlink --enable-supernode-auth), made with ssh-keygen (EC P-384, OpenSSH format):
#   supernode-<i> / supernode-<i>.pub   register the .pub with `flwr supernode register`, start
#                                       the SuperNode with --auth-supernode-private-key
set -euo pipefail
out="${1:-certificates}"
shift || true
days="${DAYS:-30}"
keys="${SUPERNODE_KEYS:-0}"
command -v openssl >/dev/null || { echo "error: openssl is not installed" >&2; exit 1; }
if ! [[ "$keys" =~ ^[0-9]+$ ]]; then
    echo "error: SUPERNODE_KEYS must be a number of key pairs, got '$keys'" >&2; exit 1
fi
if (( keys > 0 )) && ! command -v ssh-keygen >/dev/null; then
    echo "error: SUPERNODE_KEYS needs ssh-keygen (package openssh-client)" >&2; exit 1
fi
mkdir -p "$out"
umask 077

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for host in "$@"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san="$san,IP:$host"; else san="$san,DNS:$host"; fi
done

openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=tesseract-fl test CA" 2>/dev/null
openssl req -newkey rsa:2048 -sha256 -nodes \
    -keyout "$out/server.key" -out "$out/server.csr" -subj "/CN=localhost" 2>/dev/null
cat > "$out/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
openssl x509 -req -sha256 -days "$days" -in "$out/server.csr" -CA "$out/ca.crt" \
    -CAkey "$out/ca.key" -CAcreateserial -out "$out/server.pem" -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"
echo "certificates in $out: ca.crt, server.pem, server.key (SAN: $san)"
for ((i = 0; i < keys; i++)); do
    rm -f "$out/supernode-$i" "$out/supernode-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "tesseract-fl supernode $i" -f "$out/supernode-$i"
done
if (( keys > 0 )); then
    chmod 644 "$out"/supernode-*.pub
    echo "SuperNode keys in $out: supernode-0 .. supernode-$((keys - 1)) (+ .pub)"
fi

#!/usr/bin/env bash
# Certificates for the X.509 DPS interop test, made with the openssl CLI (not with the SDK's
# own certificate code, so that the gateway is checked against what an operator would make).
#
#   x509_chain.sh chain DIR ID OTHER_ID
#     DIR/root.pem|key          the fleet's root CA (the test verifies it by proof of possession)
#     DIR/inter.pem|key         an intermediate CA signed by the root (the enrollment group's)
#     DIR/rogue.pem|key         another root, uploaded but never verified
#     DIR/good-chain.pem|key    leaf CN=ID signed by the intermediate; the file holds leaf + intermediate
#     DIR/other-chain.pem|key   leaf CN=OTHER_ID, same chain (to register under another id)
#     DIR/rogueleaf-chain.pem|key  leaf CN=ID-rogue signed by the rogue root
#     DIR/old-chain.pem|key     leaf CN=ID-old signed by the intermediate, valid 2020-01-01 to 2021-01-01
#   x509_chain.sh proof DIR CODE [CA]
#     prints a certificate with CN=CODE signed by DIR/CA.key (default root): the proof of possession
set -euo pipefail

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

leaf_ext='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'

# leaf NAME CN ISSUER [with intermediate in the chain file: yes|no]
leaf() {
  local name=$1 cn=$2 issuer=$3 chain=$4
  newkey "$name-chain.key"
  openssl req -new -key "$name-chain.key" -subj "/CN=$cn" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
    -days 30 -sha256 -extfile <(printf '%s\n' "$leaf_ext") -out "$name.pem" 2>/dev/null
  if [ "$chain" = yes ]; then cat "$name.pem" inter.pem > "$name-chain.pem"; else cp "$name.pem" "$name-chain.pem"; fi
}

case "${1:-}" in
chain)
  dir=$2 id=$3 other=$4
  mkdir -p "$dir" && cd "$dir"
  ca_ext='basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign'
  for root in root rogue; do
    newkey "$root.key"
    openssl req -x509 -new -key "$root.key" -subj "/CN=interop $root CA" -days 365 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$root.pem"
  done
  newkey inter.key
  openssl req -new -key inter.key -subj "/CN=interop intermediate CA" -out inter.csr
  openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial -days 365 -sha256 \
    -extfile <(printf '%s\n' "$ca_ext") -out inter.pem 2>/dev/null
  leaf good "$id" inter yes
  leaf other "$other" inter yes
  leaf rogueleaf "$id-rogue" rogue no
  # An expired leaf: `openssl x509` cannot backdate, `openssl ca` can (-startdate/-enddate).
  newkey old-chain.key
  openssl req -new -key old-chain.key -subj "/CN=$id-old" -out old.csr
  : > index.txt
  echo 1000 > serial
  cat > ca.cnf <<CNF
[ ca ]
default_ca = here
[ here ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
[ any ]
commonName = supplied
[ leaf ]
$leaf_ext
CNF
  openssl ca -batch -config ca.cnf -cert inter.pem -keyfile inter.key -in old.csr -out old.pem \
    -startdate 20200101000000Z -enddate 20210101000000Z -extensions leaf -notext 2>/dev/null
  cat old.pem inter.pem > old-chain.pem
  ;;
proof)
  dir=$2 code=$3 ca=${4:-root}
  cd "$dir"
  newkey proof.key
  openssl req -new -key proof.key -subj "/CN=$code" -out proof.csr
  openssl x509 -req -in proof.csr -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -days 1 -sha256 \
    -out proof.pem 2>/dev/null
  cat proof.pem
  ;;
*)
  echo "usage: $0 chain DIR ID OTHER_ID | proof DIR CODE [CA]" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Self-check of the test OP: starts the plain, Okta-shaped and Entra-shaped issuers on free ports, logs alice in at
# each with drive.sh, exercises the /__test endpoints with curl, prints PASS/FAIL lines, stops what it started.
set -uo pipefail
cd "$(dirname "$0")"
[[ -d node_modules/oidc-provider ]] || npm ci --no-audit --no-fund >/dev/null
TMP=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

start() { # start VAR ENV=... : runs one OP, waits for its OP_ISSUER line, stores the issuer in VAR
  local var=$1; shift
  env OP_PORT=0 "$@" node op.mjs >"$TMP/$var.out" 2>"$TMP/$var.err" & PIDS+=($!)
  for _ in $(seq 1 100); do grep -qs '^OP_ISSUER=' "$TMP/$var.out" && break; sleep 0.1; done
  printf -v "$var" '%s' "$(sed -n 's/^OP_ISSUER=//p' "$TMP/$var.out")"
}
TID=3f7c1c2e-5b7d-4a8e-9c1f-2d6e8a4b0c11; API_GUID=00000000-1111-2222-3333-444444444444
start P
start O OP_PATH=/oauth2/default OP_AUDIENCE=api://default
start E OP_PATH=/$TID/v2.0 OP_AUDIENCE=$API_GUID OP_USERS_FILE=users-entra.json

pass=0; fail=0
check() { if eval "$2" >/dev/null 2>&1; then echo "PASS $1"; pass=$((pass+1)); else echo "FAIL $1"; fail=$((fail+1)); fi; }
part() { local s; s=$(cut -d. -f"$2" <<<"$1" | tr '_-' '/+'); while (( ${#s} % 4 )); do s+='='; done; openssl base64 -d -A <<<"$s"; }
pl() { part "$1" 2; }            # JWT payload
hd() { part "$1" 1; }            # JWT header
at() { jq -r .access_token "$TMP/$1.json"; }
idt() { jq -r .id_token "$TMP/$1.json"; }
login() { ISSUER=$1 QUIET=1 ./drive.sh "$2" >"$TMP/$3.json" 2>"$TMP/$3.log"; }  # login ISSUER USER NAME
mint() { curl -sf -X POST -H 'content-type: application/json' -d "$2" "$1/__test/token" | jq -r .access_token; }
post() { curl -sf -X POST -H 'content-type: application/json' -d "${3:-{\}}" "$1$2"; }
# verify TOKEN ISSUER: RS256 signature checks against the OP's published JWKS (by kid), with node's crypto only
verify() {
  curl -sf "$(curl -sf "$2/.well-known/openid-configuration" | jq -r .jwks_uri)" >"$TMP/jwks.json" || return 1
  node -e '
    const c = require("node:crypto"); const [t, f] = process.argv.slice(1); const [h, p, s] = t.split(".");
    const { kid, alg } = JSON.parse(Buffer.from(h, "base64url"));
    const jwk = JSON.parse(require("node:fs").readFileSync(f, "utf8")).keys.find((k) => k.kid === kid);
    const ok = alg === "RS256" && jwk && c.verify("sha256", Buffer.from(`${h}.${p}`), c.createPublicKey({ key: jwk, format: "jwk" }), Buffer.from(s, "base64url"));
    process.exit(ok ? 0 : 1);' "$1" "$TMP/jwks.json"
}
now() { date +%s; }
REDIR=http://127.0.0.1:8080/auth/callback

check "three OPs printed OP_ISSUER (plain, okta, entra)" '[[ $P == http://127.0.0.1:* && $O == */oauth2/default && $E == */$TID/v2.0 ]]'

# ---- plain issuer
check "plain: discovery issuer = OP_ISSUER" '[[ $(curl -sf $P/.well-known/openid-configuration | jq -r .issuer) == "$P" ]]'
login "$P" alice pa
check "plain: alice code+PKCE login" '[[ -n $(at pa) && $(at pa) != null ]]'
check "plain: ID+AT are RS256 and verify against JWKS" 'verify "$(idt pa)" $P && verify "$(at pa)" $P'
check "plain: AT typ at+jwt, aud api://gateway, iss" '[[ $(hd "$(at pa)" | jq -r .typ) == at+jwt && $(pl "$(at pa)" | jq -r .aud) == api://gateway && $(pl "$(at pa)" | jq -r .iss) == "$P" ]]'
check "plain: alice ID token amr has mfa, groups, acr" '[[ $(pl "$(idt pa)" | jq -c "[.amr, .groups, .acr]") == "[[\"pwd\",\"mfa\"],[\"gw-admins\",\"team-alpha\"],\"urn:okta:loa:2fa:any\"]" ]]'
check "plain: alice AT carries groups/amr/email/name" '[[ $(pl "$(at pa)" | jq -c "[.groups,.amr,.email,.name]") == "[[\"gw-admins\",\"team-alpha\"],[\"pwd\",\"mfa\"],\"alice@example.test\",\"Alice Admin\"]" ]]'
login "$P" bob pb
check "plain: bob amr lacks mfa" '[[ $(pl "$(idt pb)" | jq -c .amr) == "[\"pwd\"]" ]]'
check "plain: unknown user -> access_denied" '! login "$P" mallory px && grep -q "error=access_denied" "$TMP/px.log"'
check "plain: missing code_challenge -> PKCE required" 'curl -s -o /dev/null -w "%{redirect_url}" "$P/auth?response_type=code&client_id=gateway&redirect_uri=$REDIR&scope=openid&login_hint=alice" | grep -q "requires+PKCE"'
J="$TMP/jar"; ISSUER=$P QUIET=1 JAR=$J ./drive.sh alice >/dev/null 2>&1
check "plain: one cookie jar, alice then bob -> bob (login_hint beats the session)" 'ISSUER=$P QUIET=1 JAR=$J ./drive.sh bob >"$TMP/pj.json" && [[ $(pl "$(idt pj)" | jq -r .sub) == bob ]]'
check "plain: prompt=consent and a claims parameter need no page" 'ISSUER=$P QUIET=1 EXTRA="&prompt=consent&claims=%7B%22id_token%22%3A%7B%22acr%22%3A%7B%22essential%22%3Atrue%7D%7D%7D" ./drive.sh alice >"$TMP/pc.json" && [[ $(pl "$(idt pc)" | jq -r .sub) == alice ]]'
TAMP=$(at pa); TAMP="${TAMP%%.*}.$(pl "$TAMP" | jq -c '.groups=["gw-admins"]' | basenc --base64url -w0 | tr -d =).${TAMP##*.}"
check "plain: (verifier sanity) a tampered payload does not verify" '! verify "$TAMP" $P'
RT=$(jq -r .refresh_token "$TMP/pa.json")
check "plain: refresh grant (client_secret_basic)" 'curl -sf -u gateway:gateway-secret -d grant_type=refresh_token -d refresh_token=$RT $P/token >"$TMP/pr.json" && verify "$(at pr)" $P'
check "plain: login with client_secret_post" 'ISSUER=$P AUTH=post QUIET=1 ./drive.sh victor >"$TMP/pv.json" && [[ $(pl "$(at pv)" | jq -c .groups) == "[\"gw-viewers\"]" ]]'
check "plain: wrong client secret -> invalid_client" '[[ $(curl -s -u gateway:nope -d grant_type=refresh_token -d refresh_token=x $P/token | jq -r .error) == invalid_client ]]'

# ---- /__test endpoints (plain issuer)
K1=$(hd "$(at pa)" | jq -r .kid)
T=$(mint $P '{"sub":"bob"}')
check "token: minted AT verifies, kid current, bob claims, aud/iss/typ" 'verify "$T" $P && [[ $(hd "$T" | jq -r .kid) == "$K1" && $(hd "$T" | jq -r .typ) == at+jwt && $(pl "$T" | jq -c "[.sub,.aud,.iss,.groups[0]]") == "[\"bob\",\"api://gateway\",\"$P\",\"gw-developers\"]" ]]'
T=$(mint $P '{"sub":"bob","exp_in":-120}')
check "token: exp_in -120 -> expired (signature still valid)" 'verify "$T" $P && (( $(pl "$T" | jq .exp) < $(now) ))'
T=$(mint $P '{"sub":"alice","aud":"api://other","iss":"http://evil.test","claims":{"groups":["x"],"amr":null}}')
check "token: aud/iss/claims overrides, null removes a claim" '[[ $(pl "$T" | jq -c "[.aud,.iss,.groups,has(\"amr\")]") == "[\"api://other\",\"http://evil.test\",[\"x\"],false]" ]]'
T=$(mint $P '{"sub":"alice","kid":"no-such-kid"}')
check "token: unknown kid override is only a header value" '[[ $(hd "$T" | jq -r .kid) == no-such-kid ]] && ! verify "$T" $P'
curl -sf $P/__test/public_pem >"$TMP/pub.pem"
T=$(mint $P '{"sub":"alice"}')
check "public_pem: PEM verifies the current key's signatures" 'grep -q "BEGIN PUBLIC KEY" "$TMP/pub.pem" && printf %s "${T%.*}" | openssl dgst -sha256 -verify "$TMP/pub.pem" -signature <(part "$T" 3) | grep -q OK'
R=$(post $P /__test/rotate)
K2=$(jq -r .kid <<<"$R")
check "rotate: new kid, old and new both in JWKS" '[[ $K2 != "$K1" && $(curl -sf $P/jwks | jq -c "[.keys[].kid]|sort") == "$(jq -nc --arg a "$K1" --arg b "$K2" "[\$a,\$b]|sort")" ]]'
login "$P" alice pa2
check "rotate: next login signs ID+AT with the new kid" '[[ $(hd "$(at pa2)" | jq -r .kid) == "$K2" && $(hd "$(idt pa2)" | jq -r .kid) == "$K2" ]] && verify "$(at pa2)" $P'
check "rotate: token from before rotation still verifies" 'verify "$(at pa)" $P'
check "rotate: refresh token from before rotation still works" 'curl -sf -u gateway:gateway-secret -d grant_type=refresh_token -d refresh_token=$RT $P/token >"$TMP/pr2.json" && [[ $(hd "$(at pr2)" | jq -r .kid) == "$K2" ]]'
check "rotate: public_pem follows the new key" '! cmp -s "$TMP/pub.pem" <(curl -sf $P/__test/public_pem)'
T=$(mint $P "{\"sub\":\"alice\",\"kid\":\"$K1\"}")
check "token: kid of a published old key signs with that key" 'verify "$T" $P && [[ $(hd "$T" | jq -r .kid) == "$K1" ]]'
K3=$(post $P '/__test/rotate?drop_old=1' | jq -r .kid)
check "rotate ?drop_old=1: JWKS has only the new key" '[[ $(curl -sf $P/jwks | jq -c "[.keys[].kid]") == "[\"$K3\"]" ]] && ! verify "$(at pa)" $P'
post $P /__test/user '{"sub":"bob","groups":["gw-developers","team-beta"]}' >/dev/null
login "$P" bob pb2
check "user: bob's changed groups show on the next login (ID+AT)" '[[ $(pl "$(idt pb2)" | jq -c .groups) == "[\"gw-developers\",\"team-beta\"]" && $(pl "$(at pb2)" | jq -c .groups) == "[\"gw-developers\",\"team-beta\"]" ]]'
check "user: ... and on refresh of an older session" '[[ $(curl -sf -u gateway:gateway-secret -d grant_type=refresh_token -d refresh_token=$(jq -r .refresh_token "$TMP/pb.json") $P/token | jq -r .access_token | { read -r t; pl "$t"; } | jq -c .groups) == "[\"gw-developers\",\"team-beta\"]" ]]'

# ---- Okta-shaped issuer
check "okta: discovery under /oauth2/default, issuer = OP_ISSUER" '[[ $(curl -sf $O/.well-known/openid-configuration | jq -r .issuer) == "$O" ]]'
login "$O" alice oa
check "okta: alice login, AT aud api://default, iss, verifies" '[[ $(pl "$(at oa)" | jq -r .aud) == api://default && $(pl "$(idt oa)" | jq -r .iss) == "$O" ]] && verify "$(at oa)" $O'
check "okta: test endpoints under the issuer path" '[[ $(pl "$(mint $O "{\"sub\":\"victor\"}")" | jq -r .iss) == "$O" ]] && curl -sf $O/__test/public_pem | grep -q "BEGIN PUBLIC KEY"'

# ---- Entra-shaped issuer
check "entra: discovery under /<tid>/v2.0, issuer = OP_ISSUER" '[[ $(curl -sf $E/.well-known/openid-configuration | jq -r .issuer) == "$E" ]]'
login "$E" alice ea
check "entra: alice login, AT aud = API GUID, verifies" '[[ $(pl "$(at ea)" | jq -r .aud) == $API_GUID ]] && verify "$(at ea)" $E && verify "$(idt ea)" $E'
check "entra: alice ID token roles/acrs/tid/oid, no amr" '[[ $(pl "$(idt ea)" | jq -c "[.roles,.acrs,.tid,(.oid|test(\"^[0-9a-f-]{36}$\")),has(\"amr\")]") == "[[\"Gateway.Admin\"],[\"c1\"],\"$TID\",true,false]" ]]'
check "entra: alice AT roles/acrs/groups, no amr" '[[ $(pl "$(at ea)" | jq -c "[.roles,.acrs,.groups,has(\"amr\")]") == "[[\"Gateway.Admin\"],[\"c1\"],[\"gw-admins\",\"team-alpha\"],false]" ]]'
login "$E" bob eb
check "entra: bob has groups, GUID oid, tid, no roles/acrs/amr" '[[ $(pl "$(idt eb)" | jq -c "[.groups,(.oid|test(\"^[0-9a-f-]{36}$\")),.tid,has(\"roles\"),has(\"acrs\"),has(\"amr\")]") == "[[\"gw-developers\",\"team-alpha\",\"team-beta\"],true,\"$TID\",false,false,false]" ]]'
login "$E" dave ed
check "entra: dave overage: _claim_names/_claim_sources, no groups (ID+AT)" 'for t in "$(idt ed)" "$(at ed)"; do [[ $(pl "$t" | jq -r "._claim_names.groups + \" \" + (has(\"groups\")|tostring)") == "src1 false" ]] || exit 1; done'
EP=$(pl "$(at ed)" | jq -r ._claim_sources.src1.endpoint)
check "entra: overage endpoint under issuer, GET and POST serve groups" '[[ $EP == "$E"/graph/* && $(curl -sf $EP | jq -c .value) == "[\"gw-viewers\",\"team-gamma\"]" && $(curl -sf -X POST -d "{\"securityEnabledOnly\":false}" $EP | jq -c .value) == "[\"gw-viewers\",\"team-gamma\"]" ]]'
check "entra: overage_fail -> endpoint 503" '[[ $(post $E /__test/overage_fail | jq .overage_fail) == true && $(curl -s -o /dev/null -w "%{http_code}" $EP) == 503 ]]'
check "entra: overage_fail {fail:false} -> endpoint 200 again" '[[ $(post $E /__test/overage_fail "{\"fail\":false}" | jq .overage_fail) == false && $(curl -s -o /dev/null -w "%{http_code}" $EP) == 200 ]]'
post $E /__test/user '{"sub":"dave","groups":["gw-viewers"]}' >/dev/null
check "entra: user change also changes the overage endpoint" '[[ $(curl -sf $EP | jq -c .value) == "[\"gw-viewers\"]" ]]'

check "each OP printed exactly one stdout line" 'for v in P O E; do [[ $(wc -l <"$TMP/$v.out") == 1 ]] || exit 1; done'
echo "$pass passed, $fail failed"
[[ $fail == 0 ]]

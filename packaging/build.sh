#!/bin/sh
# build.sh - build the Caplance .deb and .rpm with nfpm (packaging/nfpm/nfpm.yaml).
# `make deb rpm` and packaging/packaging_test.go both run it.
#
#   packaging/build.sh deb rpm    build both into $OUT; print each package's path
#   packaging/build.sh version    print the package version VERSION maps to
#
# Environment:
#   VERSION     the build's version, as `make build` injects it into the programs
#               (default: git describe --tags --always --dirty)
#   RELEASE     Debian revision / RPM release (default 1)
#   OUT         where the packages go (default build/, beside build/man/)
#   MAN_DIR     pages already rendered by `make man` (build/man: NAME.SECTION files);
#               default: render man/*.md here with go-md2man
#   MAINTAINER  the Maintainer field and changelog signature
#   GO NFPM GO_MD2MAN   the tools (default: go, nfpm, go-md2man from PATH)
#   SOURCE_DATE_EPOCH   timestamp of every file (default: the commit's time), so
#               two builds of one commit give the same packages
#
# Package version (VERSION -> deb Version / rpm Version; release -1 appended):
#   v1.2.3                       1.2.3
#   v1.2.3-rc1                   1.2.3~rc1           (~ sorts before 1.2.3 in dpkg and rpm)
#   v1.2.3-4-gabc1234            1.2.3+git4.abc1234  (4 commits after the tag)
#   abc1234 (no tag yet)         0.0.0~git46.abc1234 (46 = commits to abc1234: increases)
#   a -dirty suffix              .dirty appended
set -eu

cd "$(dirname "$0")/.."
TOP=$(pwd)

GO=${GO:-go}
NFPM=${NFPM:-nfpm}
GO_MD2MAN=${GO_MD2MAN:-go-md2man}
NFPM_INSTALL='go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2'
MD2MAN_INSTALL='go install github.com/cpuguy83/go-md2man/v2@v2.0.7'

die() { echo "build.sh: $*" >&2; exit 1; }

# pkg_version RAW: the distribution form of a git-describe style version.
pkg_version() {
	v=${1#v}
	suffix=
	case $v in *-dirty) v=${v%-dirty}; suffix=.dirty ;; esac
	if echo "$v" | grep -Eq '^[0-9a-f]{7,40}$'; then
		# No tag yet: a bare commit id. The commit count keeps versions increasing.
		n=$(git rev-list --count "$v" 2>/dev/null || true)
		v="0.0.0~git$n.$v"
	elif echo "$v" | grep -Eq -- '-[0-9]+-g[0-9a-f]+$'; then
		sha=${v##*-g}
		rest=${v%-g*}
		n=${rest##*-}
		base=${rest%-*}
		v="$(echo "$base" | tr - '~')+git$n.$sha"
	else
		v=$(echo "$v" | tr - '~')
	fi
	v=$v$suffix
	echo "$v" | grep -Eq '^[0-9][A-Za-z0-9.+~]*$' ||
		die "VERSION '$1' maps to '$v', not a valid deb and rpm version (want vX.Y.Z or git describe output)"
	echo "$v"
}

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)}
PKG_VERSION=$(pkg_version "$VERSION")

if [ "${1:-}" = version ]; then
	echo "$PKG_VERSION"
	exit 0
fi
[ $# -gt 0 ] || die "usage: build.sh deb|rpm... | version"
for p in "$@"; do
	case $p in deb | rpm) ;; *) die "unknown package type '$p' (deb, rpm)" ;; esac
done

command -v "$NFPM" >/dev/null 2>&1 || die "nfpm not found: $NFPM_INSTALL"
if [ -z "${MAN_DIR:-}" ]; then
	command -v "$GO_MD2MAN" >/dev/null 2>&1 || die "go-md2man not found (renders man/*.md): $MD2MAN_INSTALL"
fi

RELEASE=${RELEASE:-1}
OUT=${OUT:-build}
MAINTAINER=${MAINTAINER:-Caplance maintainers <maintainers@caplance.invalid>}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/caplance-pkg.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT INT TERM
mkdir -p "$STAGE/bin" "$STAGE/man"

# The programs: static (no libc dependency, one binary for every distribution),
# position-independent (lintian: hardening-no-pie), without symbol tables and
# DWARF (lintian: unstripped-binary-or-object; panics still print stacks).
CGO_ENABLED=0 "$GO" build -trimpath -buildmode=pie \
	-ldflags "-s -w -X github.com/caplance/caplance/internal/version.Version=$VERSION" \
	-o "$STAGE/bin/" ./caplanced ./caplance-healthd ./caplancectl

# The manual pages, compressed as Debian policy asks (gzip -9n: no name, no
# time, so builds are reproducible).
for md in man/*.md; do
	page=$(basename "$md" .md) # caplanced.8
	if [ -n "${MAN_DIR:-}" ]; then
		[ -f "$MAN_DIR/$page" ] || die "$MAN_DIR/$page missing: run make man"
		cp "$MAN_DIR/$page" "$STAGE/man/$page"
	else
		"$GO_MD2MAN" -in "$md" -out "$STAGE/man/$page"
	fi
	gzip -9n "$STAGE/man/$page"
done

# The changelog: one entry for this build, in chglog's format; nfpm writes it
# as /usr/share/doc/caplance/changelog.Debian.gz and as the rpm's %changelog.
cat >"$STAGE/changelog.yml" <<EOF
- semver: $PKG_VERSION-$RELEASE
  date: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  packager: $MAINTAINER
  deb:
    urgency: medium
    distributions: [unstable]
  changes:
    - note: Build of $VERSION (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)).
EOF

# nfpm runs in the staging directory, where the repository's packaging/ and
# contrib/ appear as links: nfpm.yaml names every file relative to it.
ln -s "$TOP/packaging" "$TOP/contrib" "$STAGE/"
export CAPLANCE_PKG_VERSION="$PKG_VERSION" CAPLANCE_PKG_RELEASE="$RELEASE" CAPLANCE_PKG_MAINTAINER="$MAINTAINER"

for p in "$@"; do
	case $p in
	deb) file=$OUT/caplance_$PKG_VERSION-${RELEASE}_amd64.deb ;;
	rpm) file=$OUT/caplance-$PKG_VERSION-$RELEASE.x86_64.rpm ;;
	esac
	(cd "$STAGE" && "$NFPM" package --config packaging/nfpm/nfpm.yaml --packager "$p" --target "$file") >&2
	echo "$file"
done

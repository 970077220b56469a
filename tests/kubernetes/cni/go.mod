// The CNI plugins lab nodes use for their pod network (bridge, host-local, loopback, portmap),
// at the version production images carry (image-builder/artifacts.yaml: cni-plugins v1.4.0).
module kubedna.dev/tests/kubernetes/cni

go 1.22.0

require github.com/containernetworking/plugins v1.4.0

require (
	github.com/alexflint/go-filemutex v1.2.0 // indirect
	github.com/containernetworking/cni v1.1.2 // indirect
	github.com/coreos/go-iptables v0.7.0 // indirect
	github.com/mattn/go-shellwords v1.0.12 // indirect
	github.com/networkplumbing/go-nft v0.4.0 // indirect
	github.com/safchain/ethtool v0.3.0 // indirect
	github.com/vishvananda/netlink v1.2.1-beta.2 // indirect
	github.com/vishvananda/netns v0.0.4 // indirect
	golang.org/x/sys v0.15.0 // indirect
)

module github.com/caplance/caplance

go 1.26

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/google/go-cmp v0.7.0
	github.com/google/gopacket v1.1.19
)

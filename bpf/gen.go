package bpf

// gen.sh compiles c/*.c with $CLANG (default clang-19) through bpf2go.
//go:generate ./gen.sh

package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// LoadPass loads a program that passes every packet. Native-mode XDP_TX on a veth needs an XDP
// program on the peer; this is the one to put there. The caller closes it.
func LoadPass() (*ebpf.Program, error) {
	var objs passObjects
	if err := loadPassObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("load pass program: %w", verifierDetail(err))
	}
	return objs.XdpPass, nil
}

// LoadEcho loads the minimal UDP responder: packets to port get their MACs, addresses and ports
// swapped and go back out with XDP_TX; everything else passes. It is the baseline the cache is
// benchmarked against and the load generator's ceiling. The caller closes it.
func LoadEcho(port uint16) (*ebpf.Program, error) {
	spec, err := loadEcho()
	if err != nil {
		return nil, fmt.Errorf("load echo spec: %w", err)
	}
	if err := spec.Variables["cfg_port"].Set(port); err != nil {
		return nil, fmt.Errorf("set echo port: %w", err)
	}
	var objs echoObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load echo program: %w", verifierDetail(err))
	}
	return objs.XdpEcho, nil
}

// verifierDetail keeps the whole verifier log in the error text (%+v), since the last line alone
// rarely says why.
func verifierDetail(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%+v", ve)
	}
	return err
}

package server

// meta runs the meta commands: mg, ms, md, ma, mn, me.
func (c *session) meta(op byte, data []byte) (int, action) {
	switch op {
	case 'n':
		c.cmd, c.status = cmdMn, statusOK
		c.out = append(c.out, "MN\r\n"...)
		return 0, 0
	}
	c.status = statusError
	c.reply("ERROR")
	return 0, 0
}

package pt

// Pickle opcodes of protocol 2 that torch.save writes and Load understands.
const (
	opProto      = 0x80
	opStop       = '.'
	opMark       = '('
	opEmptyDict  = '}'
	opEmptyList  = ']'
	opEmptyTuple = ')'
	opTuple      = 't'
	opTuple1     = 0x85
	opTuple2     = 0x86
	opTuple3     = 0x87
	opSetItem    = 's'
	opSetItems   = 'u'
	opAppend     = 'a'
	opAppends    = 'e'
	opBinUnicode = 'X'
	opBinInt     = 'J'
	opBinInt1    = 'K'
	opBinInt2    = 'M'
	opLong1      = 0x8a
	opLong4      = 0x8b
	opBinFloat   = 'G'
	opNewTrue    = 0x88
	opNewFalse   = 0x89
	opNone       = 'N'
	opGlobal     = 'c'
	opReduce     = 'R'
	opBuild      = 'b'
	opBinPersID  = 'Q'
	opBinPut     = 'q'
	opLongBinPut = 'r'
	opBinGet     = 'h'
	opLongBinGet = 'j'
	// Protocol 4 opcodes that newer picklers may emit; accepted on reading.
	opShortBinUnicode = 0x8c
	opMemoize         = 0x94
	opFrame           = 0x95
)

// The globals torch's weights-only unpickler allows and that this package uses.
const (
	globalRebuildTensor = "torch._utils._rebuild_tensor_v2"
	globalOrderedDict   = "collections.OrderedDict"
)

// The error types are public (include/rbn/error.hpp); this header keeps the internal include path.
#pragma once

#include "rbn/error.hpp"

# oneDNN (Debian's libdnnl-dev) as the imported target DNNL::dnnl. Its own CMake config is not
# used: it requires OpenCL's development files for its GPU runtime, and rbn uses only the CPU.
if(NOT TARGET DNNL::dnnl)
  find_library(RBN_DNNL_LIBRARY NAMES dnnl REQUIRED)
  find_path(RBN_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.h REQUIRED)
  add_library(DNNL::dnnl SHARED IMPORTED)
  set_target_properties(DNNL::dnnl PROPERTIES IMPORTED_LOCATION "${RBN_DNNL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${RBN_DNNL_INCLUDE_DIR}")
endif()

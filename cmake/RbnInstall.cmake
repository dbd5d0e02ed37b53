# `cmake --install`: the libraries, the public headers (include/rbn/*), the `rbn` tool and a
# CMake package, so another project builds against rbn with
#   find_package(rbn CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE rbn::rbn)
# The libraries are static; their Debian dependencies (OpenMP, OpenBLAS, SLEEF, zlib,
# nlohmann-json, fmt, MPI when built with it) are found again by rbnConfig.cmake.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set_target_properties(rbn_core PROPERTIES EXPORT_NAME rbn)
set_target_properties(rbn_io PROPERTIES EXPORT_NAME io)
set_target_properties(rbn_cells PROPERTIES EXPORT_NAME cells)
set_target_properties(rbn_train PROPERTIES EXPORT_NAME train)
foreach(lib rbn_io rbn_cells rbn_train)
  target_include_directories(${lib} INTERFACE $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
endforeach()
if(RBN_SANITIZE)  # sanitized static libraries need the sanitizer runtimes in whatever links them
  target_link_options(rbn_core INTERFACE $<INSTALL_INTERFACE:-fsanitize=address,undefined>)
endif()
install(TARGETS rbn_io rbn_cells rbn_train rbn_core EXPORT rbnTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/rbn DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")
if(TARGET rbn)
  install(TARGETS rbn RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

set(RBN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/rbn)
install(EXPORT rbnTargets NAMESPACE rbn:: DESTINATION ${RBN_CMAKE_DIR})
set(RBN_CONFIG_WITH_MPI ${RBN_WITH_MPI})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/rbnConfig.cmake.in
  ${CMAKE_BINARY_DIR}/rbnConfig.cmake INSTALL_DESTINATION ${RBN_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/rbnConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/rbnConfig.cmake ${CMAKE_BINARY_DIR}/rbnConfigVersion.cmake
        ${CMAKE_SOURCE_DIR}/cmake/RbnDnnl.cmake
        DESTINATION ${RBN_CMAKE_DIR})

# The test: install into the build tree, build tests/install/consumer against it, run it.
if(RBN_TESTS AND TARGET rbn)
  add_test(NAME install.find_package
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/install/check_cmake_install.sh
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR}/tests/install/consumer)
  set_tests_properties(install.find_package PROPERTIES LABELS install TIMEOUT 600)
endif()

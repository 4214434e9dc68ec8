/*
 * VK_LAYER_PVRPIPE_drop_external_semaphore_fd: a Vulkan layer that removes the device extension
 * VK_KHR_external_semaphore_fd from vkCreateDevice's enabled extensions; nothing else changes.
 *
 * Why: sapien 2.2.2 (ManiSkill 2) always enables that extension, and Mesa's CPU driver
 * (lavapipe) does not offer it, so device creation fails with VK_ERROR_EXTENSION_NOT_PRESENT.
 * sapien uses it only to share semaphores with CUDA, which never happens on a CPU. The ManiSkill 2
 * worker enables this layer when it renders on lavapipe, never on a GPU.
 *
 * It follows the loader's layer interface (version 2): the loader negotiates, then calls
 * vkCreateInstance / vkCreateDevice with a link to the next entity in the chain. Its manifest
 * lists the extension as the layer's own: the loader checks a device's requested extensions
 * against the driver's and the layers' before any layer sees the call.
 */
#include <stdlib.h>
#include <string.h>
#include <vulkan/vk_layer.h>

#define EXPORT __attribute__((visibility("default")))
#define DROPPED_EXTENSION "VK_KHR_external_semaphore_fd"

/* One process renders through one chain, so the next entity's entry points are global. */
static PFN_vkGetInstanceProcAddr next_get_instance_proc_addr;
static PFN_vkGetDeviceProcAddr next_get_device_proc_addr;

static VkLayerInstanceCreateInfo *instance_link_info(const VkInstanceCreateInfo *info) {
    const VkBaseInStructure *item = info->pNext;
    for (; item; item = item->pNext) {
        VkLayerInstanceCreateInfo *link = (VkLayerInstanceCreateInfo *)item;
        if (item->sType == VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO && link->function == VK_LAYER_LINK_INFO)
            return link;
    }
    return NULL;
}

static VkLayerDeviceCreateInfo *device_link_info(const VkDeviceCreateInfo *info) {
    const VkBaseInStructure *item = info->pNext;
    for (; item; item = item->pNext) {
        VkLayerDeviceCreateInfo *link = (VkLayerDeviceCreateInfo *)item;
        if (item->sType == VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO && link->function == VK_LAYER_LINK_INFO)
            return link;
    }
    return NULL;
}

static VKAPI_ATTR VkResult VKAPI_CALL create_instance(const VkInstanceCreateInfo *info,
                                                     const VkAllocationCallbacks *allocator,
                                                     VkInstance *instance) {
    VkLayerInstanceCreateInfo *link = instance_link_info(info);
    if (!link)
        return VK_ERROR_INITIALIZATION_FAILED;
    next_get_instance_proc_addr = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;  /* the next layer finds its own link */
    PFN_vkCreateInstance next_create_instance =
        (PFN_vkCreateInstance)next_get_instance_proc_addr(VK_NULL_HANDLE, "vkCreateInstance");
    return next_create_instance(info, allocator, instance);
}

static VKAPI_ATTR VkResult VKAPI_CALL create_device(VkPhysicalDevice physical_device,
                                                   const VkDeviceCreateInfo *info,
                                                   const VkAllocationCallbacks *allocator, VkDevice *device) {
    VkLayerDeviceCreateInfo *link = device_link_info(info);
    if (!link)
        return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr get_instance_proc_addr = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    next_get_device_proc_addr = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;
    PFN_vkCreateDevice next_create_device =
        (PFN_vkCreateDevice)get_instance_proc_addr(VK_NULL_HANDLE, "vkCreateDevice");

    const char **kept = malloc(sizeof(char *) * (info->enabledExtensionCount + 1));
    if (!kept)
        return VK_ERROR_OUT_OF_HOST_MEMORY;
    uint32_t count = 0;
    for (uint32_t i = 0; i < info->enabledExtensionCount; i++)
        if (strcmp(info->ppEnabledExtensionNames[i], DROPPED_EXTENSION) != 0)
            kept[count++] = info->ppEnabledExtensionNames[i];
    VkDeviceCreateInfo filtered = *info;
    filtered.enabledExtensionCount = count;
    filtered.ppEnabledExtensionNames = kept;
    VkResult result = next_create_device(physical_device, &filtered, allocator, device);
    free(kept);
    return result;
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL get_device_proc_addr(VkDevice device, const char *name) {
    if (!strcmp(name, "vkGetDeviceProcAddr"))
        return (PFN_vkVoidFunction)get_device_proc_addr;
    return next_get_device_proc_addr ? next_get_device_proc_addr(device, name) : NULL;
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL get_instance_proc_addr(VkInstance instance, const char *name) {
    if (!strcmp(name, "vkGetInstanceProcAddr"))
        return (PFN_vkVoidFunction)get_instance_proc_addr;
    if (!strcmp(name, "vkCreateInstance"))
        return (PFN_vkVoidFunction)create_instance;
    if (!strcmp(name, "vkCreateDevice"))
        return (PFN_vkVoidFunction)create_device;
    if (!strcmp(name, "vkGetDeviceProcAddr"))
        return (PFN_vkVoidFunction)get_device_proc_addr;
    return next_get_instance_proc_addr ? next_get_instance_proc_addr(instance, name) : NULL;
}

EXPORT VKAPI_ATTR VkResult VKAPI_CALL vkNegotiateLoaderLayerInterfaceVersion(VkNegotiateLayerInterface *version) {
    if (version->sType != LAYER_NEGOTIATE_INTERFACE_STRUCT || version->loaderLayerInterfaceVersion < 2)
        return VK_ERROR_INITIALIZATION_FAILED;
    version->loaderLayerInterfaceVersion = 2;
    version->pfnGetInstanceProcAddr = get_instance_proc_addr;
    version->pfnGetDeviceProcAddr = get_device_proc_addr;
    version->pfnGetPhysicalDeviceProcAddr = NULL;
    return VK_SUCCESS;
}
